//! `flamingo-calibration`: precision rewrites over the graph IR (fp16 with
//! fp32 islands, int8 QDQ, weight-only int8/int4), observers and calibration
//! caches. The rewrites arrive with the precision work; the crate exists so
//! that the dependency direction (graphs <- calibration <- cli) is fixed.
