"""apport.ui's module constants, for hooks that read them; the interactive UI itself is not provided."""

import os

__version__ = "2.36.0"
symptom_script_dir = os.environ.get("APPORT_SYMPTOMS_DIR", "/usr/share/apport/symptoms")
PF_KTHREAD = 0x200000
