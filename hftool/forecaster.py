"""A small forecaster as a transformers model: a window of past values -> the next value.

RNN, LSTM and GRU cells (the textbook LSTM(64) + Dense(1)) or a Transformer encoder read the
window; a linear head maps the last step's state to one value per series. Being a
PreTrainedModel, it saves and loads like any HF model (config.json + model.safetensors), and the
Auto classes know it once hftool is imported (before or after transformers; hftool/__init__.py):

    import hftool
    from transformers import AutoModel
    model = AutoModel.from_pretrained("runs/lstm-forecast")  # -> TimeSeriesForecaster

Values are scaled (see hftool.data.timeseries.StandardScaler); the model never sees units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

CELLS = ("rnn", "lstm", "gru", "transformer")


class ForecasterConfig(PretrainedConfig):
    """Sizes of the forecaster, and what a saved one needs to forecast (columns, frequency).

    Args:
        cell: rnn | lstm | gru | transformer.
        input_size: Series forecast together (value columns); each is an input and an output.
        hidden_size: Width of the recurrent state (or of the Transformer's model dimension).
        num_layers: Stacked recurrent (or encoder) layers.
        dropout: Between stacked layers (and inside Transformer layers).
        num_heads: Attention heads of the Transformer cell.
        context_length: Steps in a window; the Transformer's position table has this many rows.
        columns: Names of the value columns, in input order.
        freq: pandas frequency alias of the training data (dates of forecasts).
        season_length: Seasonal period of the seasonal-naive baseline.
    """

    model_type = "hftool_forecaster"

    def __init__(self, cell: str = "lstm", input_size: int = 1, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.0, num_heads: int = 4, context_length: int = 30, columns: list | None = None,
                 freq: str = "D", season_length: int = 1, **kwargs):
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.num_heads = num_heads
        self.context_length = context_length
        self.columns = list(columns) if columns else [f"value{i}" for i in range(input_size)]
        self.freq = freq
        self.season_length = season_length
        super().__init__(**kwargs)


@dataclass
class ForecastOutput(ModelOutput):
    """loss: mean squared error on scaled values (given labels); predictions: (batch, series)."""

    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None


class TimeSeriesForecaster(PreTrainedModel):
    config_class = ForecasterConfig
    base_model_prefix = "forecaster"
    main_input_name = "past_values"

    def __init__(self, config: ForecasterConfig):
        super().__init__(config)
        c = config
        if c.cell in ("rnn", "lstm", "gru"):
            layer = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[c.cell]
            self.encoder = layer(c.input_size, c.hidden_size, num_layers=c.num_layers, batch_first=True,
                                 dropout=c.dropout if c.num_layers > 1 else 0.0)
        elif c.cell == "transformer":
            self.input_proj = nn.Linear(c.input_size, c.hidden_size)
            self.positions = nn.Parameter(torch.zeros(c.context_length, c.hidden_size))
            block = nn.TransformerEncoderLayer(c.hidden_size, c.num_heads, dim_feedforward=2 * c.hidden_size,
                                               dropout=c.dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(block, c.num_layers, enable_nested_tensor=False)
        else:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {c.cell!r}")
        self.head = nn.Linear(c.hidden_size, c.input_size)  # the Dense(1) of the textbook model, per series
        self.post_init()

    def _init_weights(self, module):
        # PyTorch's own initialisation of each layer is the usual one for these cells; only the
        # Transformer's position table is ours, a small random start as in BERT.
        if module is self and hasattr(self, "positions"):
            nn.init.normal_(self.positions, std=0.02)

    def forward(self, past_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ForecastOutput:
        """past_values: (batch, context, series), scaled; labels: (batch, series), the next values."""
        if self.config.cell == "transformer":
            steps = past_values.shape[1]
            if steps > self.positions.shape[0]:
                raise ValueError(f"a window of {steps} steps is longer than context_length={self.positions.shape[0]}")
            hidden = self.encoder(self.input_proj(past_values) + self.positions[-steps:])
        else:
            hidden, _ = self.encoder(past_values)
        predictions = self.head(hidden[:, -1])
        loss = None if labels is None else nn.functional.mse_loss(predictions, labels.to(predictions.dtype))
        return ForecastOutput(loss=loss, predictions=predictions)

    def forecast(self, past_values: torch.Tensor, horizon: int) -> torch.Tensor:
        """Recursive multi-step forecast (see `forecast`): (batch, horizon, series), scaled."""
        return forecast(self, past_values, horizon)


@torch.no_grad()
def forecast(model, past_values: torch.Tensor, horizon: int) -> torch.Tensor:
    """Recursive multi-step forecast: each prediction joins the window for the next step.

    Args:
        model: A TimeSeriesForecaster, or its ONNX export (hftool.export.OnnxModel): anything whose
            `model(past_values=...)` returns `predictions`.

    Returns:
        (batch, horizon, series), scaled.
    """
    window, steps = past_values, []
    for _ in range(horizon):
        step = model(past_values=window).predictions
        steps.append(step)
        window = torch.cat([window[:, 1:], step[:, None]], dim=1)
    return torch.stack(steps, dim=1)


AutoConfig.register(ForecasterConfig.model_type, ForecasterConfig, exist_ok=True)
AutoModel.register(ForecasterConfig, TimeSeriesForecaster, exist_ok=True)
