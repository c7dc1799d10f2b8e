using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// One outbound connect (IORING_OP_CONNECT) of a new descriptor, with the peer's sockaddr in memory of
/// its own: the kernel reads it until the completion, so it is freed only after one (or never, when the
/// operation was retired with the kernel maybe still holding it). Made per connect and disposed after it;
/// its continuation runs on the ring thread, where the connection it makes is then started.
/// </summary>
internal sealed unsafe class ConnectOperation : AwaitableRingOperation, IDisposable
{
    private const int AddressSize = 28;

    private readonly byte* _address;
    private uint _addressLength;
    private int _fd = -1;
    // Set by Cancel from any thread: a submission not yet prepared then never starts (a cancel posted
    // before the submit would find nothing in flight).
    private volatile bool _canceled;

    public ConnectOperation(RingThread thread)
        : base(thread)
    {
        _address = (byte*)NativeMemory.AllocZeroed(AddressSize);
    }

    /// <summary>Connects <paramref name="fd"/> to <paramref name="endpoint"/> (IPv4 or IPv6, the descriptor's family).</summary>
    public ValueTask<int> ConnectAsync(int fd, IPEndPoint endpoint)
    {
        _fd = fd;
        _addressLength = Write(endpoint, _address);
        return Start();
    }

    /// <summary>Cancels the connect, before its submission or while it is in flight (a caller's cancellation or ConnectTimeout); from any thread.</summary>
    public void Cancel()
    {
        _canceled = true;
        Thread.Post(s_cancel, this);
    }

    private static readonly Action<object?> s_cancel = static state =>
    {
        var operation = (ConnectOperation)state!;
        if (operation.InFlight)
        {
            operation.Thread.Cancel(operation.CurrentUserData);
        }
    };

    protected override bool TryPrepare(out int errno)
    {
        errno = LinuxNative.ECANCELED;
        if (_canceled || Thread.IsStopping)
        {
            return false;
        }

        var sqe = Thread.TryGetSqe();
        if (sqe is null)
        {
            return false;
        }

        sqe->Opcode = RingConstants.OpConnect;
        sqe->Fd = _fd;
        sqe->Addr = (ulong)_address;
        sqe->Off = _addressLength;
        sqe->UserData = NextUserData();
        return true;
    }

    // The sockaddr is the operation's own: a quarantined connect may end its waiter.
    protected override bool HoldsCallerMemory => false;

    /// <summary>
    /// A connect the resync's cancel ended is not submitted again: a second IORING_OP_CONNECT on a socket
    /// already connecting fails (EALREADY, or EISCONN once it connected), so this one ends as aborted and
    /// the caller's connect fails with that, its descriptor closed.
    /// </summary>
    protected override void Resubmit() => Finish(-LinuxNative.ECANCELED);

    /// <summary>An IPv4 or IPv6 endpoint as a sockaddr_in / sockaddr_in6 at <paramref name="address"/>; its length.</summary>
    internal static uint Write(IPEndPoint endpoint, byte* address)
    {
        new Span<byte>(address, AddressSize).Clear();
        var port = (ushort)endpoint.Port;
        address[2] = (byte)(port >> 8);
        address[3] = (byte)port;
        if (endpoint.AddressFamily == AddressFamily.InterNetwork)
        {
            *(ushort*)address = LinuxNative.AF_INET;
            endpoint.Address.TryWriteBytes(new Span<byte>(address + 4, 4), out _);
            return 16;
        }

        *(ushort*)address = LinuxNative.AF_INET6;
        endpoint.Address.TryWriteBytes(new Span<byte>(address + 8, 16), out _);
        *(uint*)(address + 24) = (uint)endpoint.Address.ScopeId;
        return 28;
    }

    public void Dispose()
    {
        // A retired connect may still be in the kernel, reading the sockaddr: its block is never freed.
        if (!Retired)
        {
            Thread.Unregister(this);
            NativeMemory.Free(_address);
        }
    }
}
