# README.md "Installing on a system", step 2: build, install and start crashd on a running system, from a
# clone of the repository. tests/system/run runs this file inside the booted container, and
# tests/test_packaging.py checks that README shows exactly these commands.
meson setup build --prefix=/usr
meson install -C build
systemctl daemon-reload
systemd-sysusers
systemd-tmpfiles --create
systemctl reload dbus
systemctl enable --now crashd.path crashd.timer
