"""duo-storyteller's builder: the engine, its models, and the firmware images."""
