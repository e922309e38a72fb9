"""MageFlow's taskiq backend: :class:`mageflow_taskiq.backend.TaskiqBackend`."""
