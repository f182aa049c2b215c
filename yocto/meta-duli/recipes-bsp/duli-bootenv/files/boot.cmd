# DULI Edge A/B slot choice for U-Boot boards (compile with `mkimage -T script`): the
# same decision as duli_firmware::bootctl::choose_slot and grub.cfg. Not yet wired into
# a recipe: an ARM machine layer installs it as boot.scr next to its kernel.
if test -z "${duli_active}"; then
    setenv duli_active A; setenv duli_target A; setenv duli_attempts 0
    setenv duli_a_good 1; setenv duli_b_good 0
fi
setenv slot ${duli_active}
if test "${duli_target}" != "${duli_active}"; then
    if test ${duli_attempts} -gt 0; then
        setexpr duli_attempts ${duli_attempts} - 1
        setenv slot ${duli_target}
    else
        setenv duli_target ${duli_active}
        setenv duli_attempts 0
    fi
    saveenv
fi
if test "${slot}" = "B"; then setenv rootpart 3; else setenv slot A; setenv rootpart 2; fi
setenv bootargs "${bootargs} root=PARTLABEL=rootfs-${slot} rootwait ro panic=10 duli.slot=${slot}"
load ${devtype} ${devnum}:${rootpart} ${kernel_addr_r} /boot/Image
load ${devtype} ${devnum}:${rootpart} ${fdt_addr_r} /boot/${fdtfile}
booti ${kernel_addr_r} - ${fdt_addr_r}
