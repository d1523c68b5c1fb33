"""Store-and-forward upload: the outbox's deliveries go to their targets, within the contract's limits.

Reading order: ``outbox`` (a delivery per part and target, and its states), ``answers`` (what a
server's answer means), ``policy`` (when to try again), ``budget`` (requests per key, minutes per
plan), ``target`` (what a target is: the interface, per part or per clip, and the checks before a
send), ``http`` (requests bounded in time and size, for the targets that speak HTTP), the targets
themselves (``sonoran``, ``bota``, ``directory``), ``targets`` (the registry: which exist, by
name), then ``uploader`` (one worker per target that ties them together) and ``network`` (waking
it when a link appears).
"""
