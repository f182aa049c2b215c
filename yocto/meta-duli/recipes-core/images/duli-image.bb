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

inherit core-image

REQUIRED_DISTRO_FEATURES = "systemd usrmerge"

IMAGE_INSTALL:append = " duli duli-model-pneumonia"
IMAGE_FEATURES:append = " read-only-rootfs"

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
ROOTFS_POSTPROCESS_COMMAND:append = " create_duli_mountpoint; link_duli_time_settings;"
