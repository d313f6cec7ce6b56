"""Adapters that plug the kernels into serving engines (imported only by the engine that uses them).

- :mod:`dllm_kernels.integrations.sglang`: dLLM decoding algorithms for SGLang (``sglang>=0.5.23,<0.6``),
  registered through the ``sglang.srt.plugins`` entry point.
- :mod:`dllm_kernels.integrations.vllm`: vLLM 0.33's DiffusionGemma ``sample_row_stats`` and its
  entropy-bound acceptance, installed through the ``vllm.general_plugins`` entry point.
- :mod:`dllm_kernels.integrations.diffusers`: diffusers 0.42's ``EntropyBoundScheduler``
  (``DiffusionGemmaPipeline``) with its step on the kernels; swapped in by the user.
"""
