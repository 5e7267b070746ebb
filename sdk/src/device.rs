//! Devices named in recipes: `cpu` (burn's `flex`), `ndarray`, `tch:cpu`, `tch:cuda:N`.

use burn::tensor::Device;

use crate::error::Error;

/// The device names a recipe may use.
pub const DEVICE_NAMES: &[&str] = &["cpu", "flex", "ndarray", "tch:cpu", "tch:cuda:N"];

/// The device named `name` (without autodiff; trainers call `.autodiff()`).
pub fn parse_device(name: &str) -> Result<Device, Error> {
    let unknown = || {
        Error::Usage(format!(
            "unknown device `{name}`: use one of {}",
            DEVICE_NAMES.join(", ")
        ))
    };
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        "ndarray" => ndarray_device(),
        _ if name.starts_with("tch:") => {
            let rest = &name[4..];
            if rest == "cpu" {
                tch_device(None)
            } else if let Some(index) = rest.strip_prefix("cuda:") {
                let index: usize = index.parse().map_err(|_| unknown())?;
                tch_device(Some(index))
            } else {
                Err(unknown())
            }
        }
        _ => Err(unknown()),
    }
}

/// The device unit tests run on: `LMLAB_TEST_DEVICE` (a device name as in recipes, e.g.
/// `tch:cpu` in a `--features tch` build), default `cpu`. Panics with the reason when the name
/// cannot be used, so a misconfigured test run fails loudly instead of testing `cpu` twice.
#[doc(hidden)]
pub fn test_device() -> Device {
    let name = std::env::var("LMLAB_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    parse_device(&name).unwrap_or_else(|e| panic!("LMLAB_TEST_DEVICE={name}: {e}"))
}

#[cfg(feature = "ndarray")]
fn ndarray_device() -> Result<Device, Error> {
    Ok(Device::ndarray())
}

#[cfg(not(feature = "ndarray"))]
fn ndarray_device() -> Result<Device, Error> {
    Err(Error::Usage(
        "device `ndarray` needs a build with `--features ndarray`".into(),
    ))
}

/// burn 0.22 marks burn-tch deprecated in favour of its CubeCL backends; libtorch is still the
/// CUDA backend the design card names, so we keep it behind the `tch` feature.
#[cfg(feature = "tch")]
#[allow(deprecated)]
fn tch_device(cuda: Option<usize>) -> Result<Device, Error> {
    Ok(match cuda {
        None => Device::libtorch(),
        Some(i) => {
            let count = tch::Cuda::device_count();
            if i as i64 >= count {
                return Err(Error::Usage(if count == 0 {
                    format!(
                        "device `tch:cuda:{i}`: libtorch sees no CUDA device (no NVIDIA driver, \
                         or a CPU-only libtorch); use `tch:cpu` or `cpu`"
                    )
                } else {
                    format!(
                        "device `tch:cuda:{i}`: libtorch sees {count} CUDA device(s), 0 to {}",
                        count - 1
                    )
                }));
            }
            Device::libtorch_cuda(i)
        }
    })
}

#[cfg(not(feature = "tch"))]
fn tch_device(_cuda: Option<usize>) -> Result<Device, Error> {
    Err(Error::Usage(
        "devices `tch:*` need a build with `--features tch` (libtorch); this one has only `cpu`"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_explain() {
        assert!(parse_device("cpu").is_ok());
        let e = parse_device("gpu").unwrap_err().to_string();
        assert!(e.contains("unknown device `gpu`"), "{e}");
        // This machine has no CUDA device: a tch build says so instead of failing later.
        #[cfg(feature = "tch")]
        if tch::Cuda::device_count() == 0 {
            let e = parse_device("tch:cuda:0").unwrap_err().to_string();
            assert!(e.contains("no CUDA device"), "{e}");
        }
        #[cfg(not(feature = "tch"))]
        assert!(
            parse_device("tch:cuda:0")
                .unwrap_err()
                .to_string()
                .contains("--features tch")
        );
    }
}
