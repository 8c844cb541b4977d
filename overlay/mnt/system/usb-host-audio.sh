#!/bin/sh
# USB host mode for a USB sound card (recipes with `audio: usb`). The SDK's S99user runs
# /mnt/system/usb.sh at boot; buildroot-external/board/milkv-duo/post-build.sh points it
# here instead of at usb-ncm.sh, the way Milk-V documents switching to host mode
# (`ln -sf /mnt/system/usb-host.sh /mnt/system/usb.sh`).
#
# The Duo has one USB port: in host mode the USB network (192.168.42.1, ssh over the USB
# cable) is gone. Reach the board on its UART console (GP0/GP1, 115200 8N1) or over
# Ethernet (an IO board). To get the USB network back: `ln -sf usb-ncm.sh
# /mnt/system/usb.sh`, then reboot.
#
# The switch itself is the SDK's: /etc/uhubon.sh host (it also tries to load dwc2.ko,
# which the Duo's kernel has built in). Without it, the role file it writes.
if [ -x /etc/uhubon.sh ]; then
    /etc/uhubon.sh host >>/tmp/usb.log 2>&1
else
    echo host >/proc/cviusb/otg_role
fi
echo "usb-host-audio: otg role $(cat /proc/cviusb/otg_role 2>/dev/null)" >>/tmp/usb.log
