/**
 * @file tblocks.h
 * @brief Umbrella header: includes every public libtblocks header.
 */
#ifndef TBLOCKS_H
#define TBLOCKS_H

#include "tblocks/version.h"
#include "tblocks/status.h"
#include "tblocks/context.h"
#include "tblocks/tensor.h"
#include "tblocks/param.h"
#include "tblocks/rng.h"
#include "tblocks/arena.h"
#include "tblocks/linear.h"
#include "tblocks/lora.h"
#include "tblocks/lstm.h"
#include "tblocks/ptuning.h"
#include "tblocks/embedding.h"
#include "tblocks/activation.h"
#include "tblocks/softmax.h"
#include "tblocks/dropout.h"
#include "tblocks/residual.h"
#include "tblocks/loss.h"
#include "tblocks/contrastive.h"
#include "tblocks/norm.h"
#include "tblocks/layernorm.h"
#include "tblocks/rmsnorm.h"
#include "tblocks/batchnorm.h"
#include "tblocks/attention.h"
#include "tblocks/kvcache.h"
#include "tblocks/mha.h"
#include "tblocks/optim.h"
#include "tblocks/schedule.h"
#include "tblocks/grad.h"
#include "tblocks/comm.h"
#include "tblocks/safetensors.h"
#include "tblocks/checkpoint.h"
#include "tblocks/lora_file.h"
#include "tblocks/sample.h"
#include "tblocks/wordpiece.h"

#endif /* TBLOCKS_H */
