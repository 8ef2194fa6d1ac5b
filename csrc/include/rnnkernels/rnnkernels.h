// rnnkernels: fused LSTM, GRU and IndRNN layer kernels (CPU). Umbrella header.
#pragma once

#include <rnnkernels/gru.h>
#include <rnnkernels/indrnn.h>
#include <rnnkernels/layer.h>
#include <rnnkernels/linear.h>
#include <rnnkernels/lstm.h>
#include <rnnkernels/peak.h>
#include <rnnkernels/rnn.h>
