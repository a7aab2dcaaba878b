//! The golden suite's instantiation (tract's `test-rt` pattern): a case is
//! written once, as `fn case(fixture: &str, backend: BackendKind) ->
//! Result<()>` (or `fn case(fixture: &str, variant: Variant)` for a
//! precision), and these macros make one `#[test]` per backend (or variant)
//! and fixture, named `case::backend::fixture`, so each runs, passes and
//! fails on its own.
//!
//! ```text
//! golden!([tiny_mpt = "tiny-mpt", tiny_neox = "tiny-neox"] vision_tokens, latents);
//! // tests: vision_tokens::tract::tiny_mpt, vision_tokens::ort_cpu::tiny_neox, ...
//! ```

/// One test per backend CI runs (tract, ONNX Runtime CPU) and fixture of
/// the list, for each case named.
#[macro_export]
macro_rules! golden {
    ($fixtures:tt $($case:ident),+ $(,)?) => {
        $( $crate::golden_case!($case $fixtures); )+
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! golden_case {
    ($case:ident [$($fx:ident = $name:literal),+ $(,)?]) => {
        mod $case {
            mod tract {
                $(
                    #[test]
                    fn $fx() -> ::anyhow::Result<()> {
                        super::super::$case($name, ::flamingo_runtime::BackendKind::Tract)
                    }
                )+
            }
            mod ort_cpu {
                $(
                    #[test]
                    fn $fx() -> ::anyhow::Result<()> {
                        super::super::$case($name, ::flamingo_runtime::BackendKind::OrtCpu)
                    }
                )+
            }
        }
    };
}

/// One test per precision variant (`$crate::Variant` constants) and
/// fixture, for a case `fn case(fixture: &str, variant: Variant)`.
#[macro_export]
macro_rules! per_variant {
    ($case:ident [$($variant:ident),+ $(,)?] $fixtures:tt) => {
        mod $case {
            $( $crate::per_variant_fixtures!($case $variant $fixtures); )+
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! per_variant_fixtures {
    ($case:ident $variant:ident [$($fx:ident = $name:literal),+ $(,)?]) => {
        #[allow(non_snake_case)]
        mod $variant {
            $(
                #[test]
                fn $fx() -> ::anyhow::Result<()> {
                    super::super::$case($name, $crate::Variant::$variant)
                }
            )+
        }
    };
}
