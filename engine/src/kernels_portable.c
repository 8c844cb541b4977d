/* KERNELS=portable: no ISA overrides; every kernel is the generic one (kernels_fast.c,
 * kernels_ref.c), which the compiler vectorises for the target as it can. */
#include "kernels.h"

const KernelSet kernels_isa = {.name = "portable"};
