"""Kafka plumbing shared by every processor: settings, logging, topics, clients, the processor runtime.

Imports only :mod:`schemas` of ours.
"""
