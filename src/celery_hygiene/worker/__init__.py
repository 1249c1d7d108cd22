"""The worker's main process: signal hooks and the threads it starts."""
