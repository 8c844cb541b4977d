#!/bin/sh
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT): $1 is the target dir.
# Installs what the recipe chose, staged by duo_builder in $DUO_PAYLOAD (a directory
# laid out like the target: the model, tokenizer, storyteller.conf, asound.conf), then
# sets up the recipe's audio route, which the payload's asound.conf names on its
# `# audio route: ROUTE` line.
set -eu
target="$1"
: "${DUO_PAYLOAD:?DUO_PAYLOAD must name the staged payload directory}"
cp -a "$DUO_PAYLOAD"/. "$target"/
# the SDK's own autostart hook runs /mnt/system/auto.sh; ours is S99storyteller
chmod 0755 "$target/etc/init.d/S99storyteller"

# Our overlay carries one asound.conf.ROUTE per audio route; only the payload's
# etc/asound.conf, the chosen one, belongs in /etc.
rm -f "$target"/etc/asound.conf.*
route=$(sed -n 's/^# audio route: *//p' "$target/etc/asound.conf")
case "$route" in
    usb)
        # The SDK's S99user runs /mnt/system/usb.sh at boot (usb-ncm.sh: device mode,
        # the USB network); a sound card needs the port in host mode.
        ln -sf usb-host-audio.sh "$target/mnt/system/usb.sh"
        ;;
    none)
        rm -f "$target/mnt/system/usb-host-audio.sh"
        ;;
    *)
        echo "post-build.sh: audio route '$route' has no sound card on the Milk-V Duo" \
            "(routes: usb, none)" >&2
        exit 1
        ;;
esac
