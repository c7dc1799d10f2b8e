using System.Net;
using System.Net.Sockets;
using Transport.Winsock.Engines.IoUring;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Engines.Sockets;

/// <summary>
/// A socket's local endpoint asked of the socket itself (getsockname) each time. .NET's
/// <see cref="Socket.LocalEndPoint"/> keeps what it read first, and a socket recycled through a reuse
/// disconnect keeps that into its next connection, which may go out from another port (always where .NET
/// emulates reuse with a new descriptor; on Windows whenever the stack picks one for the ConnectEx or
/// AcceptEx), so a recycled connection would report its previous connection's local endpoint. Elsewhere
/// than on Windows and Linux, .NET's own answer.
/// </summary>
internal static class SocketNames
{
    public static unsafe EndPoint? LocalEndPoint(Socket socket)
    {
        var family = socket.AddressFamily;
        if (family is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6) || !(OperatingSystem.IsWindows() || OperatingSystem.IsLinux()))
        {
            return socket.LocalEndPoint;
        }

        // SocketAddress writes and reads the family in the platform's own encoding (AF_INET6 is 23 on
        // Windows, 10 on Linux); the rest of a sockaddr_in or sockaddr_in6 is laid out alike on both.
        var address = new SocketAddress(family, SocketAddress.GetMaximumAddressSize(family));
        int length;
        if (OperatingSystem.IsWindows())
        {
            length = WinsockNames.LocalName(socket, address.Buffer.Span);
        }
        else
        {
            length = LinuxLocalName(socket, address.Buffer.Span);
        }

        if (length <= 0)
        {
            throw new SocketException((int)SocketError.SocketError);
        }

        address.Size = length;
        var template = family == AddressFamily.InterNetwork ? new IPEndPoint(IPAddress.Any, 0) : new IPEndPoint(IPAddress.IPv6Any, 0);
        return template.Create(address);
    }

    private static unsafe int LinuxLocalName(Socket socket, Span<byte> name)
    {
        var handle = socket.SafeHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var length = (uint)name.Length;
            fixed (byte* buffer = name)
            {
                return LinuxNative.GetSockName((int)handle.DangerousGetHandle(), buffer, &length) == 0 ? (int)length : -1;
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }
}
