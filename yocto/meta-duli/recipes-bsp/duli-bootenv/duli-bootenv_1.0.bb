SUMMARY = "DULI Edge: initial GRUB environment block and A/B boot script"
DESCRIPTION = "Deploys grub.cfg (the A/B slot choice) and a grubenv holding the \
               factory boot variables (slot A committed and good) for the EFI \
               partition of the wic image."
# nooelint: oelint.vars.homepageping - the project has no public site yet
HOMEPAGE = "https://duli.invalid/"
SECTION = "bootloaders"
CVE_PRODUCT = "duli"
LICENSE = "Apache-2.0"
# The repository carries no LICENSE file yet; the workspace declares Apache-2.0.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

DEPENDS = "grub-native"

SRC_URI = "file://grub.cfg"

inherit deploy nopackages

do_configure[noexec] = "1"
do_compile() {
    rm -f ${B}/grubenv
    grub-editenv ${B}/grubenv create
    grub-editenv ${B}/grubenv set duli_active=A duli_target=A duli_attempts=0 \
        duli_a_good=1 duli_b_good=0
}

do_deploy() {
    install -m 0644 ${UNPACKDIR}/grub.cfg ${DEPLOYDIR}/duli-grub.cfg
    install -m 0644 ${B}/grubenv ${DEPLOYDIR}/duli-grubenv
}
addtask deploy after do_compile before do_build
