namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// Whether the io_uring engine can run in this process: a ring can be set up (Docker's default seccomp
/// profile since 25.0, containerd 2.0 and kernel.io_uring_disabled refuse it with EPERM; old kernels
/// have no io_uring_setup, ENOSYS), the kernel is not older than <see cref="KernelFloor"/> (5.19),
/// IORING_REGISTER_PROBE lists every operation the engine submits, and a loopback connection goes through
/// every one of them on the ring (<see cref="ProbeRoundTrip"/>), each completion waited for a bounded time.
/// Run once per process, at the first listener's bind.
/// </summary>
internal static class IoUringProbe
{
    private static readonly Lazy<ProbeResult> s_result = new(Run);

    public static ProbeResult Result => s_result.Value;

    /// <summary>
    /// The seam where tests withhold what completes one operation of the round trip (its name: the client's
    /// connect for IORING_OP_ACCEPT, its byte for IORING_OP_POLL_ADD, the eventfd's write for IORING_OP_READ),
    /// as a sandbox that holds the operation would; no kernel here does so on demand.
    /// </summary>
    internal static string? WithholdFault { get; set; }

    /// <summary>The seam where tests give an operation of the round trip (by name) an older kernel's result.</summary>
    internal static Func<string, int, int>? ResultFault { get; set; }

    /// <summary>Runs the probe now (the tests' entry, with a fault injected at <see cref="Ring.SetupFault"/>).</summary>
    internal static ProbeResult Run()
    {
        if (!OperatingSystem.IsLinux())
        {
            return new(false, "not Linux");
        }

        try
        {
            return RunCore();
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return new(false, $"libc's syscall(2) could not be called ({ex.GetType().Name})");
        }
        catch (Exception ex)
        {
            // The ring's memory could not be mapped, or the loopback round trip could not even start (no
            // IPv4 loopback): a verdict, never an exception cached for every later listener.
            return new(false, $"{ex.GetType().Name}: {ex.Message}");
        }
    }

    private static ProbeResult RunCore()
    {
        using var ring = Ring.TryCreate(entries: 8, cqEntries: 16, out var errno);
        if (ring is null)
        {
            if (errno == LinuxNative.EINVAL && KernelFloor.CheckSetupFlags() is { } older)
            {
                return new(false, older);
            }

            var why = errno switch
            {
                LinuxNative.EPERM => " (blocked: a seccomp profile such as Docker's default, or kernel.io_uring_disabled)",
                LinuxNative.ENOSYS => " (this kernel has no io_uring)",
                _ => "",
            };
            return new(false, $"io_uring_setup failed with {LinuxNative.ErrnoName(errno)}{why}");
        }

        if (KernelFloor.CheckFeatures(ring.Features) is { } lacking)
        {
            return new(false, lacking);
        }

        var missing = ring.MissingOps(RingConstants.Required, out errno);
        if (missing is null)
        {
            return new(false, $"IORING_REGISTER_PROBE failed with {LinuxNative.ErrnoName(errno)}");
        }

        if (missing.Length > 0)
        {
            return new(false, $"this kernel lacks {missing}");
        }

        string? failed;
        using (var roundTrip = new ProbeRoundTrip(ring))
        {
            failed = roundTrip.Run();
        }

        if (failed is not null)
        {
            return new(false, failed);
        }

        var mode = (ring.Flags & RingConstants.SetupDeferTaskrun) != 0 ? "DEFER_TASKRUN"
            : (ring.Flags & RingConstants.SetupCoopTaskrun) != 0 ? "COOP_TASKRUN" : "plain task running";
        return new(true, $"ring set up with {mode}, every operation present, a loopback round trip of each passed");
    }
}

/// <summary>The probe's verdict and why.</summary>
internal sealed record ProbeResult(bool Passed, string Reason);
