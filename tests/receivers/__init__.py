"""Local HTTP stand-ins for services the tests and the benchmark cannot reach (the ESP APIs)."""
