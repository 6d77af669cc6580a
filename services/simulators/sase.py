"""SASE FEL pulses from one-dimensional FEL theory.

Self-amplified spontaneous emission starts from the shot noise of the
electron beam, so every shot is different: the power profile is a train of
spikes about one coherence time wide, and the pulse energy fluctuates from
shot to shot with the gamma distribution of M longitudinal modes.

The model is the linear (exponential-gain) regime of 1-D FEL theory, written
as filtered noise: white complex Gaussian shot noise, filtered by the gain
bandwidth, and multiplied by the mean power that the local current amplifies
to after the undulator length.  Every slice of the bunch has its own Pierce
parameter, so the pulse is shorter than the current profile (gain
narrowing).  An optional soft clip at the saturation power mimics saturation;
it is phenomenological.  The physics and its sources are in ``docs/fel.md``.

Symbols: ``rho`` the Pierce parameter, ``n_gain`` the number of power gain
lengths ``z / L_g``, ``sigma_omega`` the rms angular bandwidth (rad/s),
``tau_c`` the coherence time (s), ``dt`` the time step (s).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, StrictBool
from scipy import fft as sp_fft
from scipy.special import j0, j1

from wakefield.config import StrictModel
from wakefield.errors import PhysicsWarning, SimulationError
from wakefield.simulator import Batch, Coordinate, Simulator
from wakefield.variables import Output, Setting

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complexfloating[Any, Any]]

SPEED_OF_LIGHT = 299_792_458.0
"""c, m/s (exact)."""
ELECTRON_REST_ENERGY = 510_998.950
"""m_e c^2, eV (CODATA 2018)."""
ELEMENTARY_CHARGE = 1.602_176_634e-19
"""e, C (exact)."""
HBAR = 6.582_119_569e-16
"""Reduced Planck constant, eV s (CODATA 2018)."""
ALFVEN_CURRENT = 17_045.09
"""I_A = 4 pi eps0 m_e c^3 / e, A."""

MIN_GAIN_LENGTHS = 4.0
"""Below this many gain lengths the high-gain asymptotics do not hold."""
MIN_SAMPLES_PER_COHERENCE_TIME = 2.5
DEEP_SATURATION = 3.0
"""Linear mean power over saturation power beyond which statistics are wrong."""
EDGE_POWER_LIMIT = 1e-3
"""Mean power at the window's edges, relative to its peak, that counts as cut."""

SETTING_NAMES = ("peak_current", "bunch_length", "energy_spread", "undulator_length")


class SaseOptions(StrictModel):
    """The machine constants and the time grid of the SASE pulse simulator.

    Defaults are LCLS-like hard X-ray values (13.64 GeV electrons in a
    3 cm period, K = 3.5 planar undulator: 1.5 Angstrom, 8.3 keV photons).
    """

    beam_energy: float = Field(default=13.64e9, gt=0)
    """Electron beam energy, eV."""
    undulator_period: float = Field(default=0.03, gt=0)
    """Undulator period lambda_u, m."""
    undulator_k: float = Field(default=3.5, gt=0)
    """Peak undulator parameter K of a planar undulator."""
    normalized_emittance: float = Field(default=0.4e-6, gt=0)
    """Normalised transverse slice emittance, m rad."""
    beta_average: float = Field(default=30.0, gt=0)
    """Average beta function in the undulator, m; sets the beam size."""
    profile: Literal["gaussian", "flattop"] = "gaussian"
    """Shape of the current profile; ``flattop`` has full width sqrt(12) times
    the rms bunch length."""
    saturation: StrictBool = True
    """Clip each slice's power softly at the saturation power rho P_beam."""
    time_window: float = Field(default=50e-15, gt=0)
    """Length of the time axis, s; the pulse must fit inside it."""
    n_time: int = Field(default=1024, ge=16, le=65536)
    """Number of time samples (and of photon-energy samples)."""


class SasePulseSimulator(Simulator):
    """SASE FEL pulses (power, spectrum, field) from the electron bunch.

    Settings are the peak current (A), the rms bunch duration (s), the
    relative slice energy spread and the undulator length (m).  A shot's
    noise comes only from the ``rng`` passed to :meth:`simulate`.
    """

    name = "sase"
    Options = SaseOptions
    options: SaseOptions

    # -- what it declares ---------------------------------------------------

    def settings(self) -> list[Setting]:
        return [
            Setting(
                name="peak_current",
                unit="A",
                range=(1000.0, 4000.0),
                default=3000.0,
                description="peak current of the electron bunch",
            ),
            Setting(
                name="bunch_length",
                unit="s",
                range=(0.5e-15, 8e-15),
                default=3e-15,
                description="rms duration of the current profile",
            ),
            Setting(
                name="energy_spread",
                unit="",
                range=(0.0, 3e-4),
                default=1e-4,
                description="relative rms slice energy spread sigma_E / E",
            ),
            Setting(
                name="undulator_length",
                unit="m",
                range=(15.0, 45.0),
                default=30.0,
                description="magnetic length of undulator the beam lases in",
            ),
        ]

    def outputs(self) -> list[Output]:
        n = self.options.n_time
        profile = {"dims": ("time",), "shape": (n,), "dtype": "float32"}
        return [
            Output(name="pulse_energy", unit="J", description="FEL pulse energy"),
            Output(name="power", unit="W", description="FEL power", **profile),
            Output(
                name="spectrum",
                unit="J/eV",
                description="spectral energy density of the pulse",
                dims=("photon_energy",),
                shape=(n,),
                dtype="float32",
            ),
            Output(
                name="field_real",
                unit="sqrt(W)",
                description="real part of the complex field envelope, |E|^2 = power",
                **profile,
            ),
            Output(
                name="field_imag",
                unit="sqrt(W)",
                description="imaginary part of the complex field envelope",
                **profile,
            ),
            Output(
                name="fel_parameter", description="Pierce parameter rho at peak current"
            ),
            Output(
                name="gain_length",
                unit="m",
                description="1-D power gain length at peak current with energy spread",
            ),
            Output(
                name="coherence_time",
                unit="s",
                description="coherence time sqrt(pi) / sigma_omega",
            ),
            Output(
                name="mode_count",
                description="expected number of modes M = 1 / sigma_W^2 (linear regime)",
            ),
        ]

    def coordinates(self) -> dict[str, Coordinate]:
        return {
            "time": Coordinate(self.time, "s", "time along the pulse, head first"),
            "photon_energy": Coordinate(self.photon_energy, "eV", "photon energy"),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "simulator": self.name,
            "model": "1-D FEL linear theory, filtered shot noise",
            "options": self.options.dump(),
        }

    # -- grids and constants ------------------------------------------------

    @property
    def dt(self) -> float:
        """Time step, s."""
        return self.options.time_window / self.options.n_time

    @property
    def time(self) -> FloatArray:
        """Time axis, s, centred on the bunch."""
        n = self.options.n_time
        return np.asarray((np.arange(n) - n // 2) * self.dt, dtype=np.float64)

    @property
    def gamma(self) -> float:
        """Lorentz factor of the beam."""
        return self.options.beam_energy / ELECTRON_REST_ENERGY

    @property
    def wavelength(self) -> float:
        """Resonant wavelength lambda_r = lambda_u (1 + K^2/2) / (2 gamma^2), m."""
        k = self.options.undulator_k
        return self.options.undulator_period * (1 + k**2 / 2) / (2 * self.gamma**2)

    @property
    def angular_frequency(self) -> float:
        """Resonant angular frequency omega_r = 2 pi c / lambda_r, rad/s."""
        return 2 * math.pi * SPEED_OF_LIGHT / self.wavelength

    @property
    def photon_energy(self) -> FloatArray:
        """Photon-energy axis of the spectrum, eV, ascending."""
        omega = (
            2 * math.pi * np.fft.fftshift(np.fft.fftfreq(self.options.n_time, self.dt))
        )
        return HBAR * (self.angular_frequency + omega)

    # -- 1-D FEL theory -----------------------------------------------------

    def pierce_parameter(self, current: npt.ArrayLike) -> FloatArray:
        """The 1-D Pierce parameter rho for a current (A).

        rho = [ (I / I_A) K^2 [JJ]^2 / (16 gamma^3 sigma_x^2 k_u^2) ]^(1/3)
        with [JJ] = J0(xi) - J1(xi), xi = K^2 / (4 + 2 K^2), and the rms beam
        size sigma_x = sqrt(eps_n beta / gamma) (Huang and Kim, PRST-AB 10,
        034801 (2007)).
        """
        o = self.options
        k = o.undulator_k
        xi = k**2 / (4 + 2 * k**2)
        jj = j0(xi) - j1(xi)
        k_u = 2 * math.pi / o.undulator_period
        sigma_x2 = o.normalized_emittance * o.beta_average / self.gamma
        coupling = (k * jj) ** 2 / (16 * self.gamma**3 * sigma_x2 * k_u**2)
        current = np.clip(np.asarray(current, dtype=np.float64), 0.0, None)
        return np.asarray(
            np.cbrt(current / ALFVEN_CURRENT * coupling), dtype=np.float64
        )

    def gain_length(
        self, rho: npt.ArrayLike, energy_spread: npt.ArrayLike
    ) -> FloatArray:
        """The power gain length, m: lambda_u / (4 pi sqrt(3) rho) (1 + Lambda).

        Lambda = (sigma_E/E / rho)^2 is the energy-spread term of M. Xie's
        fit (PAC 1995) without diffraction and emittance, where it reads
        3 eta_gamma^2 with eta_gamma = 4 pi (L_1D / lambda_u) sigma_E/E.
        """
        rho = np.asarray(rho, dtype=np.float64)
        spread = np.asarray(energy_spread, dtype=np.float64)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            cold = self.options.undulator_period / (4 * math.pi * math.sqrt(3) * rho)
            return np.asarray(cold * (1 + (spread / rho) ** 2), dtype=np.float64)

    def bandwidth(self, rho: npt.ArrayLike, n_gain: npt.ArrayLike) -> FloatArray:
        """The rms angular bandwidth sigma_omega, rad/s, after n_gain gain lengths.

        The power gain at relative detuning nu = (omega - omega_r)/omega_r is
        exp(n_gain (1 - nu^2 / (36 rho^2))), a Gaussian of rms
        3 sqrt(2) rho / sqrt(n_gain), i.e. sqrt(3 sqrt(3) rho / (k_u z)).
        """
        rho = np.asarray(rho, dtype=np.float64)
        n_gain = np.asarray(n_gain, dtype=np.float64)
        sigma = self.angular_frequency * 3 * math.sqrt(2) * rho / np.sqrt(n_gain)
        return np.asarray(sigma, dtype=np.float64)

    def mean_power(
        self,
        current: npt.ArrayLike,
        energy_spread: npt.ArrayLike,
        length: npt.ArrayLike,
    ) -> FloatArray:
        """Ensemble-mean SASE power, W, of slices of a current (A) in the linear
        regime after an undulator ``length`` (m).

        <P> = (2/3) sqrt(pi / n_gain) exp(n_gain) rho^2 gamma m c^3 / lambda_r,
        with n_gain = length / L_g: shot noise of <|b|^2> = 1/N per slice of N
        electrons, coupled to the growing mode with amplitude 1/3 and
        integrated over the gain bandwidth (docs/fel.md).
        """
        current = np.asarray(current, dtype=np.float64)
        rho = self.pierce_parameter(current)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            n_gain = np.asarray(length, dtype=np.float64) / self.gain_length(
                rho, energy_spread
            )
        n_gain = np.nan_to_num(n_gain, nan=0.0)
        beam_energy = self.options.beam_energy * ELEMENTARY_CHARGE
        noise = rho**2 * beam_energy * SPEED_OF_LIGHT / self.wavelength
        # The asymptotic prefactor grows again below half a gain length, where
        # the formula no longer holds; such slices carry no noticeable power.
        prefactor = np.sqrt(math.pi / np.maximum(n_gain, 0.5))
        return np.asarray((2 / 3) * noise * prefactor * np.exp(n_gain))

    def saturation_power(self, current: npt.ArrayLike) -> FloatArray:
        """Saturation power rho P_beam, W, with P_beam = E_beam I."""
        current = np.asarray(current, dtype=np.float64)
        p_beam = self.options.beam_energy * current
        return np.asarray(self.pierce_parameter(current) * p_beam, dtype=np.float64)

    # -- settings to current ------------------------------------------------

    def current_profiles(
        self, peak_current: npt.ArrayLike, bunch_length: npt.ArrayLike
    ) -> FloatArray:
        """Current profiles (A) on :attr:`time`, one row per sample."""
        peak = np.asarray(peak_current, dtype=np.float64)[:, None]
        sigma = np.asarray(bunch_length, dtype=np.float64)[:, None]
        t = self.time[None, :]
        if self.options.profile == "gaussian":
            shape = np.exp(-0.5 * (t / sigma) ** 2)
        else:
            shape = (np.abs(t) <= math.sqrt(3) * sigma).astype(np.float64)
        return peak * shape

    def resample_current(
        self, time: npt.ArrayLike, current: npt.ArrayLike
    ) -> FloatArray:
        """Current profiles from another simulator, moved onto :attr:`time`.

        ``time`` (s) is one axis for all rows of ``current`` (A, samples x
        time); each profile is centred on its charge centroid, and is zero
        outside the range it was given on.
        """
        t_in = np.asarray(time, dtype=np.float64)
        rows = np.atleast_2d(np.asarray(current, dtype=np.float64))
        if t_in.ndim != 1 or rows.shape[1] != t_in.size:
            raise SimulationError(
                f"current has shape {rows.shape} but its time axis has {t_in.size} "
                "points; pass current as (samples, time) on one time axis"
            )
        out = np.empty((rows.shape[0], self.options.n_time))
        for i, row in enumerate(np.clip(rows, 0.0, None)):
            centroid = np.sum(t_in * row) / max(np.sum(row), 1e-300)
            out[i] = np.interp(self.time, t_in - centroid, row, left=0.0, right=0.0)
        return out

    # -- simulation ---------------------------------------------------------

    def simulate(
        self, settings: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> Batch:
        missing = [name for name in SETTING_NAMES if name not in settings]
        if missing:
            raise SimulationError(
                f"the sase simulator needs settings {list(SETTING_NAMES)}; "
                f"missing {missing}. Give every setting a value or a range in the scan."
            )
        values = {
            name: np.asarray(settings[name], dtype=np.float64) for name in SETTING_NAMES
        }
        current = self.current_profiles(values["peak_current"], values["bunch_length"])
        failures = _invalid_samples(values)
        return self.pulses(
            current, values["energy_spread"], values["undulator_length"], rng, failures
        )

    def simulate_current(
        self,
        time: npt.ArrayLike,
        current: npt.ArrayLike,
        energy_spread: npt.ArrayLike,
        undulator_length: npt.ArrayLike,
        rng: np.random.Generator,
    ) -> Batch:
        """Pulses from current profiles, such as the linac's ``current_profile``.

        ``time`` (s) and ``current`` (A, samples x time) as for
        :meth:`resample_current`; ``energy_spread`` (relative) and
        ``undulator_length`` (m) one value per sample.
        """
        profiles = self.resample_current(time, current)
        n = profiles.shape[0]
        spread = np.broadcast_to(np.asarray(energy_spread, dtype=np.float64), (n,))
        length = np.broadcast_to(np.asarray(undulator_length, dtype=np.float64), (n,))
        values = {
            "peak_current": profiles.max(axis=1),
            "energy_spread": spread,
            "undulator_length": length,
        }
        return self.pulses(profiles, spread, length, rng, _invalid_samples(values))

    def pulses(
        self,
        current: FloatArray,
        energy_spread: FloatArray,
        undulator_length: FloatArray,
        rng: np.random.Generator,
        failures: dict[int, str] | None = None,
    ) -> Batch:
        """Simulate one shot for each row of ``current`` (A on :attr:`time`)."""
        failures = dict(failures or {})
        ok = np.array([i not in failures for i in range(current.shape[0])])
        mean = self.mean_power(
            current, energy_spread[:, None], undulator_length[:, None]
        )
        mean = np.where(ok[:, None], mean, 0.0)

        # The gain bandwidth and coherence time of each shot: those of the
        # slice with the highest gain, which dominates the pulse.
        peak = np.argmax(mean, axis=1)
        peak_current = current[np.arange(current.shape[0]), peak]
        rho = self.pierce_parameter(peak_current)
        gain_length = self.gain_length(rho, energy_spread)
        n_gain = np.where(ok, undulator_length / gain_length, np.nan)
        sigma_omega = self.bandwidth(rho, n_gain)
        p_sat = np.where(ok, self.saturation_power(peak_current), np.inf)
        saturation = mean.max(axis=1) / p_sat
        self._check_validity(mean, n_gain, sigma_omega, saturation, ok)

        # Shot noise filtered by the gain bandwidth, scaled to the local power.
        filt = self._filter(sigma_omega)
        noise = rng.standard_normal((2, *current.shape), dtype=np.float32)
        white = (noise[0] + 1j * noise[1]) * np.float32(math.sqrt(0.5))
        field = sp_fft.ifft(filt.astype(np.float32) * sp_fft.fft(white, axis=1), axis=1)
        field *= np.sqrt(mean).astype(np.float32)
        if self.options.saturation:
            field = self._saturate(field, current)

        power = np.abs(field) ** 2
        outputs = {
            "pulse_energy": power.sum(axis=1, dtype=np.float64) * self.dt,
            "power": power,
            "spectrum": spectrum(field, self.dt),
            "field_real": field.real,
            "field_imag": field.imag,
            "fel_parameter": rho,
            "gain_length": gain_length,
            "coherence_time": math.sqrt(math.pi) / sigma_omega,
            "mode_count": _mode_count(mean, filt),
        }
        for name, value in outputs.items():
            value[~ok] = np.nan
            dtype = np.float32 if value.ndim > 1 else np.float64
            outputs[name] = value.astype(dtype, copy=False)
        log.debug("simulated %s SASE shots, %s failed", current.shape[0], len(failures))
        return Batch(outputs=outputs, failures=failures)

    def _filter(self, sigma_omega: FloatArray) -> FloatArray:
        """Amplitude response of the gain bandwidth on the FFT grid, one row per
        shot, normalised so that filtered unit white noise has unit power."""
        omega = 2 * math.pi * np.fft.fftfreq(self.options.n_time, self.dt)
        sigma = np.nan_to_num(sigma_omega, nan=1.0)[:, None]
        response = np.exp(-((omega[None, :] / (2 * sigma)) ** 2))
        norm = np.sqrt(np.mean(response**2, axis=1, keepdims=True))
        return np.asarray(response / norm, dtype=np.float64)

    def _saturate(self, field: ComplexArray, current: FloatArray) -> ComplexArray:
        """Clip power softly: P -> P_sat tanh(P / P_sat), keeping the phase."""
        power = np.abs(field) ** 2
        p_sat = self.saturation_power(current)
        with np.errstate(divide="ignore", invalid="ignore"):
            clipped = p_sat * np.tanh(power / p_sat)
            scale = np.where(power > 0, np.sqrt(clipped / power), 0.0)
        return field * scale

    def _check_validity(
        self,
        mean: FloatArray,
        n_gain: FloatArray,
        sigma_omega: FloatArray,
        saturation: FloatArray,
        ok: npt.NDArray[np.bool_],
    ) -> None:
        """Warn about shots outside what the model and its grid describe.

        ``saturation`` is each shot's peak linear mean power over the
        saturation power.
        """
        if not ok.any():
            return
        deep = saturation[ok] > DEEP_SATURATION
        if deep.any():
            warnings.warn(
                f"{deep.sum()} shots are deep in saturation (linear-theory power up "
                f"to {saturation[ok].max():.3g} times rho P_beam); the soft clip "
                "there underestimates the energy fluctuations. Use a shorter "
                "undulator_length for statistically faithful pulses.",
                PhysicsWarning,
                stacklevel=4,
            )
        low = n_gain[ok] < MIN_GAIN_LENGTHS
        if low.any():
            warnings.warn(
                f"{low.sum()} shots have fewer than {MIN_GAIN_LENGTHS} gain lengths "
                f"(lowest {np.nanmin(n_gain):.2f}); the high-gain formulas do not "
                "hold there. Use a longer undulator_length or a higher peak_current.",
                PhysicsWarning,
                stacklevel=4,
            )
        tau_c = math.sqrt(math.pi) / np.nanmax(sigma_omega[ok])
        if tau_c < MIN_SAMPLES_PER_COHERENCE_TIME * self.dt:
            warnings.warn(
                f"the time step {self.dt:.3g} s resolves the coherence time "
                f"{tau_c:.3g} s with fewer than {MIN_SAMPLES_PER_COHERENCE_TIME} "
                "samples; spikes are under-resolved. Raise n_time.",
                PhysicsWarning,
                stacklevel=4,
            )
        peak = mean[ok].max(axis=1)
        edge = np.maximum(mean[ok, 0], mean[ok, -1]) / np.where(peak > 0, peak, 1.0)
        if (edge > EDGE_POWER_LIMIT).any():
            warnings.warn(
                f"the pulse is cut by the time window in {(edge > EDGE_POWER_LIMIT).sum()}"
                f" shots (edge power up to {edge.max():.2g} of the peak). Raise "
                "time_window (and n_time) or shorten bunch_length.",
                PhysicsWarning,
                stacklevel=4,
            )


def spectrum(field: ComplexArray, dt: float) -> FloatArray:
    """Spectral energy density, J/eV, of complex field envelopes (sqrt(W)).

    Rows are shots; the result is ordered by ascending photon energy (the
    ``photon_energy`` axis) and integrates to the pulse energy.
    """
    amplitude = sp_fft.fftshift(sp_fft.fft(field, axis=-1), axes=-1)
    return np.asarray(np.abs(amplitude) ** 2 * dt**2 / (2 * math.pi * HBAR))


def _mode_count(mean: FloatArray, filt: FloatArray) -> FloatArray:
    """M = (sum <P>)^2 / sum <P>_t <P>_t' |g1(t - t')|^2, by circular FFTs."""
    # filt is real and even in frequency, so g1 is real.
    g1 = sp_fft.ifft(filt**2, axis=1).real
    kernel = (g1 / g1[:, :1]) ** 2
    n = mean.shape[1]
    spread = sp_fft.irfft(
        sp_fft.rfft(mean, axis=1) * sp_fft.rfft(kernel, axis=1), n=n, axis=1
    )
    denominator = np.sum(mean * spread, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(mean.sum(axis=1) ** 2 / denominator)


def _invalid_samples(values: Mapping[str, FloatArray]) -> dict[int, str]:
    """Samples whose settings no physics can use, with the reason."""
    failures: dict[int, str] = {}
    for name, v in values.items():
        allowed = v >= 0 if name == "energy_spread" else v > 0
        rule = ">= 0" if name == "energy_spread" else "> 0"
        for i in np.flatnonzero(~(np.isfinite(v) & allowed)):
            failures.setdefault(int(i), f"{name} = {v[i]:g} is not finite and {rule}")
    return failures
