using System.Net;
using System.Net.Sockets;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// Whether the io_uring engine can run in this process: a ring can be set up (Docker's default seccomp
/// profile since 25.0, containerd 2.0 and kernel.io_uring_disabled refuse it with EPERM; old kernels
/// have no io_uring_setup, ENOSYS), IORING_REGISTER_PROBE lists every operation the engine submits, and a
/// loopback connection goes through the ring: accept, receive, send, close. Run once per process.
/// </summary>
internal static unsafe class IoUringProbe
{
    private static readonly Lazy<ProbeResult> s_result = new(Run);

    public static ProbeResult Result => s_result.Value;

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
            var why = errno switch
            {
                LinuxNative.EPERM => " (blocked: a seccomp profile such as Docker's default, or kernel.io_uring_disabled)",
                LinuxNative.ENOSYS => " (this kernel has no io_uring)",
                _ => "",
            };
            return new(false, $"io_uring_setup failed with {LinuxNative.ErrnoName(errno)}{why}");
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

        var roundTrip = RoundTrip(ring);
        if (roundTrip is not null)
        {
            return new(false, roundTrip);
        }

        var mode = (ring.Flags & RingConstants.SetupDeferTaskrun) != 0 ? "DEFER_TASKRUN"
            : (ring.Flags & RingConstants.SetupCoopTaskrun) != 0 ? "COOP_TASKRUN" : "plain task running";
        return new(true, $"ring set up with {mode}, every operation present, a loopback round trip passed");
    }

    /// <summary>Accept, receive, send and close on the ring, against a blocking client on 127.0.0.1.</summary>
    private static string? RoundTrip(Ring ring)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.ReceiveTimeout = 2000;
        client.Connect(listener.LocalEndPoint!);

        var address = stackalloc byte[128 + sizeof(uint)];
        var length = (uint*)(address + 128);
        *length = 128;
        var fd = Run(ring, sqe =>
        {
            sqe->Opcode = RingConstants.OpAccept;
            sqe->Fd = (int)listener.Handle;
            sqe->Addr = (ulong)address;
            sqe->Off = (ulong)length;
            sqe->OpFlags = LinuxNative.SOCK_CLOEXEC;
        });
        if (fd < 0)
        {
            return $"IORING_OP_ACCEPT failed with {LinuxNative.ErrnoName(-fd)}";
        }

        var accepted = fd;
        try
        {
            client.Send("p"u8);
            var buffer = stackalloc byte[4];
            var received = Run(ring, sqe =>
            {
                sqe->Opcode = RingConstants.OpRecv;
                sqe->Fd = accepted;
                sqe->Addr = (ulong)buffer;
                sqe->Len = 4;
            });
            if (received != 1 || buffer[0] != (byte)'p')
            {
                return $"IORING_OP_RECV returned {Describe(received)} instead of the byte sent";
            }

            var sent = Run(ring, sqe =>
            {
                sqe->Opcode = RingConstants.OpSend;
                sqe->Fd = accepted;
                sqe->Addr = (ulong)buffer;
                sqe->Len = 1;
                sqe->OpFlags = LinuxNative.MSG_NOSIGNAL;
            });
            if (sent != 1)
            {
                return $"IORING_OP_SEND returned {Describe(sent)}";
            }

            // The FIN as the engine sends it (shutdown(2)), then the client must see byte and FIN.
            if (LinuxNative.Shutdown(accepted, LinuxNative.SHUT_WR) != 0)
            {
                return $"shutdown(2) of the accepted socket failed with {LinuxNative.ErrnoName(LinuxNative.Errno)}";
            }

            var echo = new byte[4];
            if (client.Receive(echo) != 1 || echo[0] != (byte)'p' || client.Receive(echo) != 0)
            {
                return "the client did not get the byte and then the FIN the ring sent";
            }
        }
        catch (SocketException ex)
        {
            return $"the loopback client failed: {ex.SocketErrorCode}";
        }
        finally
        {
            var closed = Run(ring, sqe =>
            {
                sqe->Opcode = RingConstants.OpClose;
                sqe->Fd = accepted;
            });
            if (closed != 0)
            {
                LinuxNative.Close(accepted);
            }
        }

        return null;
    }

    private static string Describe(int result) => result < 0 ? LinuxNative.ErrnoName(-result) : result.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private delegate void Fill(Sqe* sqe);

    /// <summary>One operation, waited for: its result, or a negative errno.</summary>
    private static int Run(Ring ring, Fill fill)
    {
        var sqe = ring.TryGetSqe();
        fill(sqe);
        sqe->UserData = 7;
        var entered = ring.Enter(wait: true);
        if (entered < 0)
        {
            return entered;
        }

        // Task work can need one more entry to post the completion (DEFER_TASKRUN).
        for (var i = 0; i < 100 && !ring.TryPeek(out _); i++)
        {
            ring.Enter(wait: true);
        }

        if (!ring.TryPeek(out var cqe))
        {
            return -LinuxNative.ETIME;
        }

        ring.Advance();
        return cqe.Res;
    }
}

/// <summary>The probe's verdict and why.</summary>
internal sealed record ProbeResult(bool Passed, string Reason);
