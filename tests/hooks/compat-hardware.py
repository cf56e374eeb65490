# ruff: noqa: F405  (the names come from apport's star import, as in real hooks)
"""apport.hookutils' hardware, audio, network and printing attachments: the keys apport adds."""

from apport.hookutils import *  # noqa: F403


def add_info(report, ui):
    before = set(report)
    attach_alsa(report)
    report["Keys.Alsa"] = " ".join(sorted(set(report) - before))
    for name, attach in (
        ("Wifi", attach_wifi),
        ("Printing", attach_printing),
        ("Network", attach_network),
        ("Hardware", attach_hardware),
        ("Drm", attach_drm_info),
        ("Mac", attach_mac_events),
        ("Journal", attach_journal_errors),
        ("Grub", attach_default_grub),
    ):
        before = set(report)
        attach(report)
        report[f"Keys.{name}"] = " ".join(sorted(set(report) - before))
    report["PciAll"] = repr(type(pci_devices()))
    report["Usb"] = repr(type(usb_devices()))
