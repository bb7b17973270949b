"""A run's workdir: its file names and summary keys (`files`, `summary`), the writer of its
metrics (`writer`), the one loader of its trained model (`restore`), and reading runs back for
tables and plots (`runs`, `plots`)."""
