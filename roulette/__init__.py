"""roulette: a self-hosted chat-roulette server on Twisted and Autobahn."""

__version__ = "0.1.0"
