"""Model servers spri-sft starts and stops itself (see `spri_sft.serve.vllm`)."""

from spri_sft.serve.vllm import ManagedServers, VLLMServer

__all__ = ["ManagedServers", "VLLMServer"]
