"""Prepared data: the sharded format that training, editing and evaluation read
(:mod:`~emorig.data.dataset`) and the photo -> shards preparation (:mod:`~emorig.data.prepare`).
"""
