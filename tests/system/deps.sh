# README.md "Installing on a system", step 1: the Python dependencies for the system interpreter that
# /usr/bin/crashd runs (`python3 -I`). tests/system/run runs this file (once per cached container root)
# and tests/test_packaging.py checks that README shows exactly these commands.
apt-get install -y --no-install-recommends python3 python3-pip meson pkg-config python3-pymongo python3-systemd
python3 -m pip install --break-system-packages --root-user-action=ignore 'dbus-fast>=4.0' 'asyncinotify>=4.0' 'backports.zstd>=1.0'
