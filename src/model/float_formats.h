/* model/float_formats: conversions between fp32 and the 16-bit float formats checkpoints store (IEEE fp16, bf16).
 *
 * Bit-exact and portable (no compiler __fp16 / _Float16): fp16 -> fp32 and bf16 -> fp32 are exact for every input,
 * including subnormals, infinities and NaN payloads; fp32 -> fp16 / bf16 round to nearest, ties to even, and keep NaN a
 * NaN. So 16 -> 32 -> 16 round-trips every bit pattern exactly. */
#ifndef XLKV_MODEL_FLOAT_FORMATS_H
#define XLKV_MODEL_FLOAT_FORMATS_H

#include <stdint.h>

float xlkv_f16_to_f32(uint16_t h);
uint16_t xlkv_f32_to_f16(float f);
float xlkv_bf16_to_f32(uint16_t b);
uint16_t xlkv_f32_to_bf16(float f);

#endif
