# scripts/mpi-env.sh (sourced): OpenMPI settings for running `mpirun ... xlkv train` in a container.
#   - mpirun from PATH, else the OpenMPI of a staged Debian tree (.deps/root/usr, see scripts/gpu-session.sh), made
#     relocatable with OPAL_PREFIX;
#   - one host without a usable network: the ob1 messaging layer (not UCX, which probes network devices) over the
#     shared-memory (vader) and self transports, no CMA single-copy (ptrace is
#     usually denied in containers), more ranks than cores allowed, no warnings about unused components.
# Defines the array `mpirun_cmd` (mpirun plus the flags a root shell in a container needs).
if ! command -v mpirun >/dev/null 2>&1 && [ -x "${XLKV_SOURCE_DIR:-.}/.deps/root/usr/bin/mpirun" ]; then
  export OPAL_PREFIX=$(cd "${XLKV_SOURCE_DIR:-.}/.deps/root/usr" && pwd)
  export PATH=$OPAL_PREFIX/bin:$PATH
  export LD_LIBRARY_PATH=$OPAL_PREFIX/lib/x86_64-linux-gnu/openmpi/lib:$OPAL_PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader} OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_base_warn_component_unused=0
mpirun_cmd=(mpirun --allow-run-as-root --oversubscribe)
