using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// One accept kept posted on a listening descriptor (IORING_OP_ACCEPT), with its own sockaddr for the
/// peer's address, so that every connection's endpoint is its own. The result is the new descriptor.
/// </summary>
internal sealed unsafe class AcceptOperation : AwaitableRingOperation, IDisposable
{
    private const int AddressSize = 128;

    private readonly int _listenFd;
    private readonly IoUringListenerEngine _listener;
    private readonly byte* _address;
    private readonly uint* _addressLength;

    public AcceptOperation(RingThread thread, int listenFd, IoUringListenerEngine listener)
        : base(thread)
    {
        _listenFd = listenFd;
        _listener = listener;
        _address = (byte*)NativeMemory.AllocZeroed(AddressSize + sizeof(uint));
        _addressLength = (uint*)(_address + AddressSize);
    }

    public ValueTask<int> AcceptAsync(bool direct)
    {
        _direct = direct;
        return Start();
    }

    private bool _direct;

    /// <summary>Whether the last accept was into a direct descriptor slot.</summary>
    public bool Direct => _direct;

    protected override bool TryPrepare(out int errno)
    {
        errno = LinuxNative.ECANCELED;
        // A slot that resumes after its listener began to stop must not post an accept the stop's cancel
        // has already gone past: it would wait for a client that may never come.
        if (_listener.IsStopping)
        {
            return false;
        }

        var sqe = Thread.TryGetSqe();
        if (sqe is null)
        {
            return false;
        }

        *_addressLength = AddressSize;
        sqe->Opcode = RingConstants.OpAccept;
        sqe->Fd = _listenFd;
        sqe->Addr = (ulong)_address;
        sqe->Off = (ulong)_addressLength;
        if (_direct)
        {
            // A direct descriptor has no close-on-exec (the kernel refuses the flag with it).
            sqe->FileIndex = RingConstants.FileIndexAlloc;
        }
        else
        {
            sqe->OpFlags = LinuxNative.SOCK_CLOEXEC;
        }

        sqe->UserData = NextUserData();
        return true;
    }

    /// <summary>The peer of the last accept, from its sockaddr (AF_INET or AF_INET6).</summary>
    public IPEndPoint? RemoteEndPoint() => Parse(_address, *_addressLength);

    /// <summary>An IPv4 or IPv6 sockaddr as an endpoint; null for anything else.</summary>
    internal static IPEndPoint? Parse(byte* address, uint length)
    {
        var family = *(ushort*)address;
        var port = (address[2] << 8) | address[3];
        if (family == 2 && length >= 16)
        {
            return new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(address + 4, 4)), port);
        }

        if (family == 10 && length >= 28)
        {
            var scope = *(uint*)(address + 24);
            return new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(address + 8, 16), scope), port);
        }

        return null;
    }

    /// <summary>getsockname of an accepted descriptor (for a listener bound to a wildcard address).</summary>
    public static IPEndPoint? LocalEndPoint(int fd)
    {
        var address = stackalloc byte[AddressSize];
        uint length = AddressSize;
        return LinuxNative.GetSockName(fd, address, &length) == 0 ? Parse(address, length) : null;
    }

    // The sockaddr is the operation's own, never the waiter's: a quarantined accept may end its waiter.
    protected override bool HoldsCallerMemory => false;

    public void Dispose()
    {
        // A retired accept may still be in the kernel, writing the peer's address: its block is never freed.
        if (!Retired)
        {
            Thread.Unregister(this);
            NativeMemory.Free(_address);
        }
    }
}
