using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Transport.Winsock.Interop;

/// <summary>The Winsock calls .NET does not expose. Windows only.</summary>
[SupportedOSPlatform("windows")]
internal static partial class WinsockNative
{
    private const string Ws2_32 = "ws2_32.dll";
    private const int SocketErrorReturn = -1;

    /// <summary>
    /// WSASendDisconnect(s, NULL): disables sends and starts the graceful close, i.e. sends a FIN, the same
    /// as shutdown(SD_SEND). It never blocks, whatever SO_LINGER says.
    /// </summary>
    [LibraryImport(Ws2_32, SetLastError = true)]
    private static partial int WSASendDisconnect(SafeSocketHandle socket, nint outboundDisconnectData);

    /// <summary>Sends a FIN. Returns the Winsock error, <see cref="SocketError.Success"/> when the FIN is on its way.</summary>
    public static SocketError SendDisconnect(SafeSocketHandle socket)
    {
        return WSASendDisconnect(socket, 0) == SocketErrorReturn
            ? (SocketError)Marshal.GetLastPInvokeError()
            : SocketError.Success;
    }
}
