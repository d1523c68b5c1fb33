"""The process: the daemon that builds and runs every stage, its status, systemd's notify
protocol, the control socket and the GPIO button and LED.
"""
