"""The ground floor shared by models/, dataloaders/ and tools/: user errors, atomic file writes, safe
checkpoint loading and the logger. It imports nothing else of the project."""
