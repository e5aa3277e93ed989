/* model/float_formats: see float_formats.h. */
#include "model/float_formats.h"

#include <string.h>

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float xlkv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mantissa << 13)); /* inf / NaN, payload kept */
    if (exponent != 0) return bits_to_f32(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0) return bits_to_f32(sign); /* signed zero */
    /* subnormal: value = mantissa * 2^-24; normalise it into an fp32 normal */
    int shift = 0;
    while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        shift++;
    }
    mantissa &= 0x3ffu;
    return bits_to_f32(sign | ((uint32_t)(113 - shift) << 23) | (mantissa << 13));
}

uint16_t xlkv_f32_to_f16(float f) {
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exponent = (u >> 23) & 0xffu;
    uint32_t mantissa = u & 0x7fffffu;
    if (exponent == 0xff) {
        if (!mantissa) return sign | 0x7c00u;
        uint16_t payload = (uint16_t)(mantissa >> 13);
        return sign | 0x7c00u | (payload ? payload : 0x200u); /* NaN stays NaN */
    }
    int e = (int)exponent - 127 + 15;
    if (e >= 0x1f) return sign | 0x7c00u; /* overflow -> inf */
    if (e <= 0) {
        /* subnormal fp16 (or zero): shift the full significand right, round to nearest even */
        if (e < -10) return sign;
        uint32_t significand = mantissa | 0x800000u;
        int shift = 14 - e; /* 13 + (1 - e) */
        uint32_t half = 1u << (shift - 1);
        uint32_t result = significand >> shift;
        uint32_t rest = significand & ((1u << shift) - 1u);
        if (rest > half || (rest == half && (result & 1u))) result++;
        return sign | (uint16_t)result; /* a carry into the exponent field is the right answer */
    }
    uint32_t result = ((uint32_t)e << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (result & 1u))) result++; /* may carry up to inf: correct */
    return sign | (uint16_t)result;
}

float xlkv_bf16_to_f32(uint16_t b) { return bits_to_f32((uint32_t)b << 16); }

uint16_t xlkv_f32_to_bf16(float f) {
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) {
        uint16_t top = (uint16_t)(u >> 16);
        return (top & 0x7fu) ? top : (uint16_t)(top | 0x40u); /* NaN stays NaN */
    }
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)((u + rounding) >> 16);
}
