"""Performance tooling: what the harness and the model cost on this machine, beside cyclelike/, study/ and analysis/
(which never import it)."""
