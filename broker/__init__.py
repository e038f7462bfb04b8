"""chatkit-broker: mints OpenAI ChatKit client secrets for signed-in users."""

__version__ = "0.1.0"
