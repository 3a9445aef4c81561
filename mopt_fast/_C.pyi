# The compiled extension (csrc/module.cpp): importing it registers the torch.ops.mopt_fast ops;
# what Python reads of it besides is declared here for the type checker.
cpu_isa: str  # the ISA the CPU kernels were compiled for (MOPT_FAST_CPU_ISA)
with_cuda: int  # 1 when the CUDA kernels were compiled in
