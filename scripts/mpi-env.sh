# scripts/mpi-env.sh (sourced): OpenMPI settings for running `mpirun ... xlkv train` in a container.
#   - the first mpirun that can start a process: the OpenMPI of a staged Debian tree (.deps/root/usr, see
#     scripts/gpu-session.sh), made relocatable with OPAL_PREFIX, else the one on PATH. The staged tree comes first:
#     where it exists its libraries are on LD_LIBRARY_PATH, and a system mpirun would load its own plugins against
#     them (on the GPU machine: "mca_pmix_ext3x.so: undefined symbol: PMIx_Info_create");
#   - one host without a usable network: the ob1 messaging layer (not UCX, which probes network devices) over the
#     shared-memory (vader) and self transports, no CMA single-copy (ptrace is
#     usually denied in containers), more ranks than cores allowed, no warnings about unused components.
# Defines the array `mpirun_cmd` (mpirun plus the flags a root shell in a container needs).
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader} OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_base_warn_component_unused=0
# NVLink multicast stays off on the shared GPU machines (it can take the host's GPUs out of service)
export NCCL_NVLS_ENABLE=0
mpirun_cmd=(mpirun --allow-run-as-root --oversubscribe)
xlkv_staged_mpi=${XLKV_SOURCE_DIR:-.}/.deps/root/usr
# Debian's package ships orterun and mpirun.openmpi; the mpirun link comes from update-alternatives, absent here
if [ -x "$xlkv_staged_mpi/bin/mpirun.openmpi" ]; then
  xlkv_staged_mpi=$(cd "$xlkv_staged_mpi" && pwd)
  if OPAL_PREFIX=$xlkv_staged_mpi PATH=$xlkv_staged_mpi/bin:$PATH \
     LD_LIBRARY_PATH=$xlkv_staged_mpi/lib/x86_64-linux-gnu/openmpi/lib:$xlkv_staged_mpi/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
     timeout 30 "$xlkv_staged_mpi/bin/mpirun.openmpi" --allow-run-as-root --oversubscribe -np 1 true >/dev/null 2>&1 \
     || ! command -v mpirun >/dev/null 2>&1; then
    export OPAL_PREFIX=$xlkv_staged_mpi
    export PATH=$OPAL_PREFIX/bin:$PATH
    export LD_LIBRARY_PATH=$OPAL_PREFIX/lib/x86_64-linux-gnu/openmpi/lib:$OPAL_PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    mpirun_cmd[0]=$OPAL_PREFIX/bin/mpirun.openmpi
  fi
fi
unset xlkv_staged_mpi
