################################################################################
#
# flynn-host: built from this repository (the tree above BR2_EXTERNAL)
#
################################################################################

FLYNN_HOST_VERSION = 0.1.0
FLYNN_HOST_SITE = $(BR2_EXTERNAL_FLYNN_PATH)/..
FLYNN_HOST_SITE_METHOD = local
FLYNN_HOST_LICENSE = BSD-3-Clause
# zlib-ng (flate2) builds with cmake; libseccomp is found with pkg-config.
FLYNN_HOST_DEPENDENCIES = host-cmake host-pkgconf libseccomp
FLYNN_HOST_CARGO_ENV = LIBSECCOMP_LINK_TYPE=dylib
FLYNN_HOST_CARGO_BUILD_OPTS = \
	--locked --profile appliance \
	-p flynn-host --bin flynn-host \
	-p flynn-runtime --bin flynn-shim-monitor

# A workspace with two binaries: install them by hand, not with `cargo install`.
define FLYNN_HOST_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/appliance/flynn-host \
		$(TARGET_DIR)/usr/bin/flynn-host
	$(INSTALL) -D -m 0755 $(@D)/target/$(RUSTC_TARGET_NAME)/appliance/flynn-shim-monitor \
		$(TARGET_DIR)/usr/bin/flynn-shim-monitor
endef

$(eval $(cargo-package))
