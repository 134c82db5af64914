"""Deploy: Kubernetes objects (KServe InferenceService) rendered from a plan."""
