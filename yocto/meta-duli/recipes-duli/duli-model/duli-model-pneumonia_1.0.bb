SUMMARY = "DULI Edge: manifest of the pneumonia classifier model"
DESCRIPTION = "Installs the model manifest (input, normalisation, labels, thresholds, \
               checksums). The weights are not part of the image: they arrive as a \
               signed model pack fetched from the site's model store, and may not be \
               redistributed."
# nooelint: oelint.vars.homepageping - the project has no public site yet
HOMEPAGE = "https://duli.invalid/"
SECTION = "misc"
CVE_PRODUCT = "duli"
LICENSE = "Apache-2.0"
# The repository carries no LICENSE file yet; the workspace declares Apache-2.0.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

DULI_GIT_URI ??= "git://git.duli.invalid/duli-edge.git;protocol=https"
SRC_URI = "${DULI_GIT_URI};branch=main"
SRCREV = "1c85014745f00f3dcfa0054c25d47ee665d72d64"

# Path of the manifest inside the repository.
DULI_MODEL_MANIFEST ?= "models/pneumonia-xception/model.toml"

inherit allarch

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${datadir}/duli/models/pneumonia-xception
    install -m 0644 ${S}/${DULI_MODEL_MANIFEST} ${D}${datadir}/duli/models/pneumonia-xception/
}

FILES:${PN} += "${datadir}/duli/models"
RDEPENDS:${PN} = "duli"
