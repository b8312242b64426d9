"""Autoregressive models, exact likelihoods as products of conditionals (objective=ar_nll): NADE, MADE, PixelCNN, PixelRNN
(Row LSTM, Diagonal BiLSTM) over images and vectors, and WaveNet over 1-D sequences (audio) and images in raster order."""
