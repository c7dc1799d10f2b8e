using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Transport.Winsock.Interop;

/// <summary>getsockname on Windows: a socket's local address as the provider holds it now.</summary>
[SupportedOSPlatform("windows")]
internal static unsafe partial class WinsockNames
{
    [LibraryImport("ws2_32.dll", EntryPoint = "getsockname", SetLastError = true)]
    private static partial int GetSockName(SafeSocketHandle socket, byte* name, int* nameLength);

    /// <summary>Fills <paramref name="name"/> (a sockaddr of the socket's family) and returns its length; -1 on failure.</summary>
    public static int LocalName(Socket socket, Span<byte> name)
    {
        var length = name.Length;
        fixed (byte* buffer = name)
        {
            return GetSockName(socket.SafeHandle, buffer, &length) == 0 ? length : -1;
        }
    }
}
