using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The probe's loopback round trip: every operation and flag the engine submits, on the probe's ring,
/// against a blocking client on 127.0.0.1. Each completion is waited for at most <see cref="WaitMs"/>
/// (IORING_ENTER_EXT_ARG), so that a sandbox or an LSM that holds a network operation fails the probe
/// naming it rather than hanging the listener's bind. The operations' memory is native and freed only once
/// nothing is left in flight: an operation the kernel still holds after the probe gave up on it could
/// otherwise write into memory that was reused meanwhile.
/// </summary>
internal sealed unsafe partial class ProbeRoundTrip : IDisposable
{
    /// <summary>The longest the probe waits for one completion.</summary>
    internal const int WaitMs = 2000;

    private const int MemorySize = 512;
    // Offsets into the native block: sockaddr (128) and its length, buffers, iovecs, msghdr.
    private const int Address = 0, AddressLength = 128, Received = 160, Sent = 168, Iovecs = 176, Msghdr = 208, Counter = 272, Pending = 280;

    private readonly Ring _ring;
    private readonly byte* _memory = (byte*)NativeMemory.AllocZeroed(MemorySize);
    private readonly Dictionary<ulong, int> _completions = [];
    // Submitted, a completion expected and not seen yet.
    private readonly HashSet<ulong> _inFlight = [];
    private int _accepted = -1;
    private int _eventFd = -1;

    public ProbeRoundTrip(Ring ring) => _ring = ring;

    /// <summary>Null when every step passed, else what failed.</summary>
    public string? Run()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.ReceiveTimeout = WaitMs;
        client.SendTimeout = WaitMs;
        try
        {
            return Accept(listener, client) ?? Receive(client) ?? Send(client) ?? ReadEventFd() ?? Cancel() ?? Close();
        }
        catch (SocketException ex)
        {
            return $"the loopback client failed: {ex.SocketErrorCode}";
        }
    }

    private string? Accept(Socket listener, Socket client)
    {
        *(uint*)(_memory + AddressLength) = 128;
        var sqe = Next(1, RingConstants.OpAccept);
        sqe->Fd = (int)listener.Handle;
        sqe->Addr = (ulong)(_memory + Address);
        sqe->Off = (ulong)(_memory + AddressLength);
        sqe->OpFlags = LinuxNative.SOCK_CLOEXEC;
        Submit();
        if (!Withheld("IORING_OP_ACCEPT"))
        {
            client.Connect(listener.LocalEndPoint!);
        }

        var fd = Await(1, "IORING_OP_ACCEPT", out var failed);
        if (failed is not null || fd < 0)
        {
            return failed ?? $"IORING_OP_ACCEPT failed with {Describe(fd)}";
        }

        _accepted = fd;
        return null;
    }

    private string? Receive(Socket client)
    {
        // A poll armed before the data comes, as a connection waits without a buffer; then the receive.
        var sqe = Next(2, RingConstants.OpPollAdd);
        sqe->Fd = _accepted;
        sqe->OpFlags = RingConstants.PollIn;
        Submit();
        if (!Withheld("IORING_OP_POLL_ADD"))
        {
            client.Send("p"u8);
        }

        var events = Await(2, "IORING_OP_POLL_ADD", out var failed);
        if (failed is not null || (events & RingConstants.PollIn) == 0)
        {
            return failed ?? $"IORING_OP_POLL_ADD returned {Describe(events)} instead of POLLIN";
        }

        sqe = Next(3, RingConstants.OpRecv);
        sqe->Fd = _accepted;
        sqe->Addr = (ulong)(_memory + Received);
        sqe->Len = 8;
        var received = Await(3, "IORING_OP_RECV", out failed);
        return failed ?? (received == 1 && _memory[Received] == (byte)'p' ? null : $"IORING_OP_RECV returned {Describe(received)} instead of the byte sent");
    }

    private string? Send(Socket client)
    {
        var bytes = _memory + Sent;
        bytes[0] = (byte)'a';
        bytes[1] = (byte)'b';
        bytes[2] = (byte)'c';
        var sqe = Next(4, RingConstants.OpSend);
        sqe->Fd = _accepted;
        sqe->Addr = (ulong)bytes;
        sqe->Len = 1;
        sqe->OpFlags = LinuxNative.MSG_NOSIGNAL;
        var sent = Await(4, "IORING_OP_SEND", out var failed);
        if (failed is not null || sent != 1)
        {
            return failed ?? $"IORING_OP_SEND returned {Describe(sent)}";
        }

        // A gather list of two, as a send of a sequence of segments goes.
        var iovecs = (nint*)(_memory + Iovecs);
        iovecs[0] = (nint)(bytes + 1);
        iovecs[1] = 1;
        iovecs[2] = (nint)(bytes + 2);
        iovecs[3] = 1;
        *(nint*)(_memory + Msghdr + 16) = (nint)iovecs;
        *(nint*)(_memory + Msghdr + 24) = 2;
        sqe = Next(5, RingConstants.OpSendMsg);
        sqe->Fd = _accepted;
        sqe->Addr = (ulong)(_memory + Msghdr);
        sqe->Len = 1;
        sqe->OpFlags = LinuxNative.MSG_NOSIGNAL;
        sent = Await(5, "IORING_OP_SENDMSG", out failed);
        if (failed is not null || sent != 2)
        {
            return failed ?? $"IORING_OP_SENDMSG returned {Describe(sent)}";
        }

        // The FIN as the engine sends it (shutdown(2)); the client must see the three bytes, then the FIN.
        if (LinuxNative.Shutdown(_accepted, LinuxNative.SHUT_WR) != 0)
        {
            return $"shutdown(2) of the accepted socket failed with {LinuxNative.ErrnoName(LinuxNative.Errno)}";
        }

        var echo = new byte[8];
        var read = 0;
        while (read < 3 && client.Receive(echo, read, echo.Length - read, SocketFlags.None) is var n and > 0)
        {
            read += n;
        }

        return read == 3 && echo.AsSpan(0, 3).SequenceEqual("abc"u8) && client.Receive(echo) == 0
            ? null
            : "the client did not get the bytes and then the FIN the ring sent";
    }

    private string? ReadEventFd()
    {
        // The ring thread's wake-up: a read of an eventfd, completed by a write from another thread.
        _eventFd = LinuxNative.EventFd(0, LinuxNative.EFD_CLOEXEC);
        if (_eventFd < 0)
        {
            return $"eventfd(2) failed with {LinuxNative.ErrnoName(LinuxNative.Errno)}";
        }

        var sqe = Next(6, RingConstants.OpRead);
        sqe->Fd = _eventFd;
        sqe->Addr = (ulong)(_memory + Counter);
        sqe->Len = 8;
        Submit();
        if (!Withheld("IORING_OP_READ"))
        {
            ulong one = 1;
            LinuxNative.Write(_eventFd, &one, 8);
        }

        var read = Await(6, "IORING_OP_READ", out var failed);
        return failed ?? (read == 8 ? null : $"IORING_OP_READ of an eventfd returned {Describe(read)}");
    }

    private string? Cancel()
    {
        // A connection's close: a pending receive canceled by its user_data, the cancel's own success
        // skipped (IOSQE_CQE_SKIP_SUCCESS); a NOP after it shows that nothing else was posted.
        var sqe = Next(7, RingConstants.OpRecv);
        sqe->Fd = _accepted;
        sqe->Addr = (ulong)(_memory + Pending);
        sqe->Len = 8;
        sqe = Next(8, RingConstants.OpAsyncCancel, expectCompletion: false);
        sqe->Fd = -1;
        sqe->Addr = 7;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
        Next(9, RingConstants.OpNop);
        var canceled = Await(7, "IORING_OP_RECV", out var failed);
        if (failed is not null || canceled != -LinuxNative.ECANCELED)
        {
            return failed ?? $"IORING_OP_ASYNC_CANCEL did not cancel a pending IORING_OP_RECV (it ended with {Describe(canceled)})";
        }

        if ((failed = Posted(9, 8, "IORING_OP_ASYNC_CANCEL")) is not null)
        {
            return failed;
        }

        // A ring's stop: everything in flight canceled at once (IORING_ASYNC_CANCEL_ANY | ALL).
        sqe = Next(10, RingConstants.OpPollAdd);
        sqe->Fd = _accepted;
        sqe->OpFlags = RingConstants.PollIn;
        sqe = Next(11, RingConstants.OpAsyncCancel);
        sqe->Fd = -1;
        sqe->OpFlags = RingConstants.CancelAny | RingConstants.CancelAll;
        var count = Await(11, "IORING_OP_ASYNC_CANCEL", out failed);
        if (failed is null && count == -LinuxNative.EINVAL)
        {
            // 5.18 knows the opcode but not these flags.
            failed = KernelFloor.CancelAllRefused;
        }

        if (failed is not null || count < 1)
        {
            return failed ?? $"IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY | ALL returned {Describe(count)}";
        }

        canceled = Await(10, "IORING_OP_POLL_ADD", out failed);
        return failed ?? (canceled == -LinuxNative.ECANCELED ? null : $"IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY | ALL left a poll that ended with {Describe(canceled)}");
    }

    private string? Close()
    {
        // A connection's descriptor closes in submission order, its success skipped.
        var sqe = Next(12, RingConstants.OpClose, expectCompletion: false);
        sqe->Fd = _accepted;
        sqe->Flags = RingConstants.SqeCqeSkipSuccess;
        Next(13, RingConstants.OpNop);
        var failed = Posted(13, 12, "IORING_OP_CLOSE");
        if (!_completions.ContainsKey(12))
        {
            // Closed by the ring; a failed close leaves it to Dispose.
            _accepted = -1;
        }

        return failed;
    }

    /// <summary>After the completion of <paramref name="after"/>: null when <paramref name="skipped"/> (a success with IOSQE_CQE_SKIP_SUCCESS) posted nothing.</summary>
    private string? Posted(ulong after, ulong skipped, string op)
    {
        Await(after, "IORING_OP_NOP", out var failed);
        if (failed is not null || !_completions.TryGetValue(skipped, out var result))
        {
            return failed;
        }

        return result < 0
            ? $"{op} failed with {Describe(result)}"
            : $"{op} succeeded and still posted a completion (IOSQE_CQE_SKIP_SUCCESS has no effect)";
    }

    private static bool Withheld(string op) => IoUringProbe.WithholdFault == op;

    private static string Describe(int result) => result < 0 ? LinuxNative.ErrnoName(-result) : result.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
