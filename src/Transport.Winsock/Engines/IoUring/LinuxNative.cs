using System.Runtime.InteropServices;

namespace Transport.Winsock.Engines.IoUring;

/// <summary>
/// The few libc calls the io_uring engine makes: the three io_uring system calls through
/// <c>syscall(2)</c> (glibc has no wrappers for them), the ring's memory maps, and the socket calls the
/// ring does not make. Every call reports errno; <see cref="Errno"/> reads it. No native library ships.
/// </summary>
internal static unsafe partial class LinuxNative
{
    private const string Libc = "libc";

    // x86-64 and arm64 system call numbers: io_uring was added after the two tables were unified.
    public const long SysIoUringSetup = 425;
    public const long SysIoUringEnter = 426;
    public const long SysIoUringRegister = 427;

    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EBUSY = 16;
    public const int EINVAL = 22;
    public const int ENFILE = 23;
    public const int EMFILE = 24;
    public const int EPIPE = 32;
    public const int ENOSYS = 38;
    public const int ENOBUFS = 105;
    public const int ENOTCONN = 107;
    public const int ECONNABORTED = 103;
    public const int ECONNRESET = 104;
    public const int ECANCELED = 125;
    public const int EPERM = 1;
    public const int ETIME = 62;
    public const int EBADR = 74;
    public const int EALREADY = 114;

    public const int ECONNREFUSED = 111;
    public const int EACCES = 13;
    public const int EAFNOSUPPORT = 97;
    public const int EADDRNOTAVAIL = 99;
    public const int ETIMEDOUT = 110;

    public const ushort AF_INET = 2;
    public const ushort AF_INET6 = 10;
    public const int SOCK_STREAM = 1;
    public const int IPPROTO_TCP = 6;
    public const int TCP_NODELAY = 1;
    public const int SOL_SOCKET = 1;
    public const int SO_LINGER = 13;
    public const int SHUT_WR = 1;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;
    public const int MSG_NOSIGNAL = 0x4000;

    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int MAP_SHARED = 1;
    public const int MAP_POPULATE = 0x8000;
    public static readonly nint MapFailed = -1;

    [LibraryImport(Libc, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall3(long number, long a1, long a2, long a3);

    [LibraryImport(Libc, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall4(long number, long a1, long a2, long a3, long a4);

    [LibraryImport(Libc, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall6(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    [LibraryImport(Libc, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport(Libc, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint address, nuint length);

    [LibraryImport(Libc, EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Libc, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Libc, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport(Libc, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport(Libc, EntryPoint = "getsockname", SetLastError = true)]
    public static partial int GetSockName(int fd, void* address, uint* length);

    [LibraryImport(Libc, EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    private const int F_DUPFD_CLOEXEC = 1030;

    /// <summary>A new descriptor (close-on-exec) for the same open socket as <paramref name="fd"/>, or -1.</summary>
    public static int DuplicateDescriptor(int fd) => Fcntl(fd, F_DUPFD_CLOEXEC, 0);

    [LibraryImport(Libc, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport(Libc, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, void* buffer, nuint count);

    [LibraryImport(Libc, EntryPoint = "getrlimit", SetLastError = true)]
    private static partial int GetRLimit(int resource, long* limits);

    /// <summary>The soft RLIMIT_NOFILE (struct rlimit { rlim_cur, rlim_max }), or -1 when it cannot be read.</summary>
    public static long SoftFileLimit()
    {
        const int RLIMIT_NOFILE = 7;
        var limits = stackalloc long[2];
        return GetRLimit(RLIMIT_NOFILE, limits) == 0 ? limits[0] : -1;
    }

    /// <summary>errno of the last call above.</summary>
    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>A zero linger, so that the close of <paramref name="fd"/> sends an RST.</summary>
    public static int SetZeroLinger(int fd)
    {
        // struct linger { int l_onoff; int l_linger; }
        var linger = stackalloc int[2] { 1, 0 };
        return SetSockOpt(fd, SOL_SOCKET, SO_LINGER, linger, 8);
    }

    /// <summary>The symbolic name of an errno the engine meets, for messages.</summary>
    public static string ErrnoName(int errno) => errno switch
    {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EINTR => "EINTR",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EBUSY => "EBUSY",
        EINVAL => "EINVAL",
        ENFILE => "ENFILE",
        EMFILE => "EMFILE",
        EPIPE => "EPIPE",
        ENOSYS => "ENOSYS",
        ENOBUFS => "ENOBUFS",
        ENOTCONN => "ENOTCONN",
        ECONNABORTED => "ECONNABORTED",
        ECONNRESET => "ECONNRESET",
        ECANCELED => "ECANCELED",
        ETIME => "ETIME",
        EBADR => "EBADR",
        EALREADY => "EALREADY",
        _ => $"errno {errno}",
    };
}
