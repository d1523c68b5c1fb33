"""Store-and-forward upload: the outbox's deliveries go to their targets, within the contract's limits.

Reading order: ``answers`` (what a server's answer means), ``policy`` (when to try again),
``budget`` (requests per key, minutes per plan), ``targets`` (the interface) with ``sonoran`` and
``directory``, then ``uploader`` (one worker per target that ties them together).
"""
