"""System tests: real OS services and events (systemd, journald, veth pairs, kill -9, the installer)."""
