SUMMARY = "DULI Edge appliance image: A/B root filesystems and a data partition"
DESCRIPTION = "Minimal systemd image running the duli daemon, laid out by \
               duli-ab.wks with two root filesystem slots for signed A/B updates \
               and a separate data partition."
# nooelint: oelint.vars.homepageping - the project has no public site yet
HOMEPAGE = "https://duli.invalid/"
SECTION = "images"
CVE_PRODUCT = "duli"
LICENSE = "Apache-2.0"
# The repository carries no LICENSE file yet; the workspace declares Apache-2.0.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

inherit core-image extrausers

REQUIRED_DISTRO_FEATURES = "systemd usrmerge"

# util-linux's sulogin, so the emergency and rescue shells behave as documented below.
IMAGE_INSTALL:append = " duli duli-model-pneumonia util-linux-sulogin"
IMAGE_FEATURES:append = " read-only-rootfs"

# No login without a password, whatever local.conf asks for: poky's sample local.conf sets
# EXTRA_IMAGE_FEATURES ?= "allow-empty-password empty-root-password allow-root-login"
# (debug-tweaks before 5.1), which would leave root with an empty password. They are
# removed here (from IMAGE_FEATURES, which bitbake.conf extends with EXTRA_IMAGE_FEATURES,
# and from EXTRA_IMAGE_FEATURES itself), and the anonymous function below stops the build
# if any of them is still set.
DULI_FORBIDDEN_IMAGE_FEATURES = "allow-empty-password empty-root-password allow-root-login \
                                 serial-autologin-root debug-tweaks"
IMAGE_FEATURES:remove = "${DULI_FORBIDDEN_IMAGE_FEATURES}"
EXTRA_IMAGE_FEATURES:remove = "${DULI_FORBIDDEN_IMAGE_FEATURES}"

# Root is locked: no password opens it, on a console or anywhere else. With a locked root,
# systemd's emergency and rescue shells (sulogin) refuse to start a shell ("the root account
# is locked") and the boot carries on towards the default target; see yocto/README.md.
EXTRA_USERS_PARAMS = "usermod -L root;"

# A parse-time check is the point here: a forbidden feature stops the build before any task runs.
# nooelint: oelint.task.noanonpython
python () {
    forbidden = set((d.getVar("DULI_FORBIDDEN_IMAGE_FEATURES") or "").split())
    for var in ("IMAGE_FEATURES", "EXTRA_IMAGE_FEATURES"):
        present = sorted(forbidden & set((d.getVar(var) or "").split()))
        if present:
            bb.fatal("duli-image: %s still holds %s: the appliance must not allow a login "
                     "without a password (see yocto/README.md)" % (var, " ".join(present)))
    if "usermod -L root;" not in (d.getVar("EXTRA_USERS_PARAMS") or ""):
        bb.fatal("duli-image: EXTRA_USERS_PARAMS must lock root (usermod -L root;)")
}

duli_check_accounts[doc] = "Fails the image when an account has an empty password or root is not locked"
# After every rootfs step (extrausers and rootfs-postcommands run in do_rootfs): the image
# as it will be written, not the variables that should have produced it.
duli_check_accounts() {
    shadow=${IMAGE_ROOTFS}${sysconfdir}/shadow
    passwd=${IMAGE_ROOTFS}${sysconfdir}/passwd
    [ -f "$shadow" ] || bbfatal "duli-image: no $shadow"
    empty="$(awk -F: '$2 == "" { print $1 }' "$shadow" "$passwd")"
    [ -z "$empty" ] || bbfatal "duli-image: accounts with an empty password: $empty"
    case "$(awk -F: '$1 == "root" { print $2 }' "$shadow")" in
    '!'*) ;;
    *) bbfatal "duli-image: root is not locked in $shadow" ;;
    esac
}
IMAGE_PREPROCESS_COMMAND:append = " duli_check_accounts"

# wic for the first install; ext4 is the root filesystem payload of update bundles
# (`duli firmware sign --kind rootfs --payload duli-image-<machine>.rootfs.ext4`).
IMAGE_FSTYPES = "wic wic.bmap ext4"
WKS_FILE = "duli-ab.wks"
WKS_FILE_DEPENDS:append = " duli-bootenv"
# nooelint: oelint.vars.mispell - read by the bootimg_efi wic plugin
IMAGE_EFI_BOOT_FILES:append = " duli-grubenv;EFI/BOOT/grubenv"

create_duli_mountpoint[doc] = "Creates the mount points of the data partition and its bind mounts"
# Room in the read-only root for the data partition (/data, data.mount) and the folders
# bound from it: /var/lib/duli (var-lib-duli.mount) and /etc/duli (etc-duli.mount, the
# provisioned configuration, which must survive slot switches).
create_duli_mountpoint() {
    install -d ${IMAGE_ROOTFS}/data ${IMAGE_ROOTFS}/var/lib/duli ${IMAGE_ROOTFS}/etc/duli
}

link_duli_time_settings[doc] = "Points /etc/localtime and /etc/timezone into the data partition"
# `duli provision` sets the time zone; on the read-only root it writes through these links
# (the seeds are made by duli-data-layout.service on first boot).
link_duli_time_settings() {
    ln -sf /data/etc/localtime ${IMAGE_ROOTFS}${sysconfdir}/localtime
    ln -sf /data/etc/timezone ${IMAGE_ROOTFS}${sysconfdir}/timezone
}
enable_duli_time_wait_sync[doc] = "Makes time-sync.target wait, at most 90 s, for a synchronised clock"
# duli.service starts after time-sync.target, but the target means "synchronised" only when
# systemd-time-wait-sync.service holds it back, and systemd ships that unit disabled: the
# daemon would stamp its first studies, audit records and sessions with whatever the
# hardware clock said. The unit is enabled (the link `systemctl enable` makes, from its
# WantedBy=sysinit.target) and its wait bounded, so a site whose NTP servers cannot be
# reached still starts the daemon after 90 s (systemd/README.md, "Time at start").
enable_duli_time_wait_sync() {
    unit=${systemd_system_unitdir}/systemd-time-wait-sync.service
    [ -f "${IMAGE_ROOTFS}$unit" ] || bbfatal "duli-image: $unit is missing (systemd built without timesyncd?)"
    etc=${IMAGE_ROOTFS}${sysconfdir}/systemd/system
    install -d "$etc/sysinit.target.wants" "$etc/systemd-time-wait-sync.service.d"
    ln -sf "$unit" "$etc/sysinit.target.wants/systemd-time-wait-sync.service"
    printf '[Service]\nTimeoutStartSec=90s\n' > "$etc/systemd-time-wait-sync.service.d/duli.conf"
}
enable_duli_watchdog[doc] = "Lets systemd feed the hardware watchdog, so a hung boot or system restarts"
# A trial slot falls back only by rebooting until its attempts are spent: a kernel panic
# reboots after 10 s (panic=10 on both boot scripts' command lines), and a boot or system
# that hangs is reset by the hardware watchdog systemd feeds (the NUC's iTCO_wdt; a board
# without one logs that it has none and carries on), so an unattended box never stays
# stuck on a trial that cannot reach mark-good.
enable_duli_watchdog() {
    conf=${IMAGE_ROOTFS}${sysconfdir}/systemd/system.conf.d
    install -d "$conf"
    printf '[Manager]\nRuntimeWatchdogSec=30s\nRebootWatchdogSec=5min\n' > "$conf/duli-watchdog.conf"
}
ROOTFS_POSTPROCESS_COMMAND:append = " create_duli_mountpoint; link_duli_time_settings; enable_duli_time_wait_sync; enable_duli_watchdog;"
