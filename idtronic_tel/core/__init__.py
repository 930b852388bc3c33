"""The core: domain rules and storage. Imports nothing from api/, smpp/ or ivr/."""
