"""Stage recall: video recall requests (``request``: parsed, checked, stored), the synced inbox
(``inbox``), the service that runs them as footage jobs (``service``, ``build``: regular or
timelapse), and what the operator reads of them (``status``, ``troubles``).
"""
