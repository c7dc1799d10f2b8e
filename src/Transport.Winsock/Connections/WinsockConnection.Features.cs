using System.Buffers;
using System.Collections;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace Transport.Winsock.Connections;

// The connection is its own feature collection: the standard connection features are the connection
// itself. What the server or application sets is kept in one of two ways. Kestrel sets four features on
// every connection, all its own connection object (heartbeat, complete, lifetime notification, metrics
// context): features set to one same object share a field, with a bit each in a mask over a process-wide
// list of the types set so far (SharedFeatureTypes), 12 bytes a connection where an array of the four
// pairs cost 88 (a dictionary twice that), held by every idle keep-alive connection. Anything else (another
// object, a null, a 33rd type) goes to a small array made on first use and searched in order.
// IConnectionSocketFeature is there where the engine has a socket to show (ConnectionIo.ExposeSocket):
// a socket that was asked for is never recycled, and what the application holds is disposed when the
// connection lets its socket go, so it can never reach a later connection.
internal sealed partial class WinsockConnection :
    IFeatureCollection,
    IConnectionIdFeature,
    IConnectionTransportFeature,
    IConnectionItemsFeature,
    IMemoryPoolFeature,
    IConnectionLifetimeFeature,
    IConnectionEndPointFeature,
    IConnectionSocketFeature
{
    private static readonly Type[] s_ownFeatures =
    [
        typeof(IConnectionIdFeature),
        typeof(IConnectionTransportFeature),
        typeof(IConnectionItemsFeature),
        typeof(IMemoryPoolFeature),
        typeof(IConnectionLifetimeFeature),
        typeof(IConnectionEndPointFeature),
    ];

    // The object the features of _sharedMask's bits are set to, and those bits (SharedFeatureTypes).
    private object? _sharedFeature;
    private uint _sharedMask;
    private KeyValuePair<Type, object?>[]? _setFeatures;
    private int _setCount;
    private int _featureRevision;
    private string? _connectionId;
    private IDictionary<object, object?>? _items;

    public override IFeatureCollection Features => this;

    /// <summary>Forgets what the previous connection set; the revision keeps counting, so no cache sees stale features.</summary>
    private void ResetFeatures()
    {
        if (_setCount > 0 || _sharedMask != 0)
        {
            Array.Clear(_setFeatures ?? [], 0, _setCount);
            _setCount = 0;
            _sharedMask = 0;
            _sharedFeature = null;
            _featureRevision++;
        }

        _connectionId = null;
        _items = null;
    }

    public override string ConnectionId
    {
        get => _connectionId ??= _id.ToString("X16", System.Globalization.CultureInfo.InvariantCulture);
        set => _connectionId = value;
    }

    public override IDictionary<object, object?> Items
    {
        get => _items ??= new ConnectionItems();
        set => _items = value;
    }

    MemoryPool<byte> IMemoryPoolFeature.MemoryPool => _factory.MemoryPool;

    bool IFeatureCollection.IsReadOnly => false;

    int IFeatureCollection.Revision => _featureRevision;

    object? IFeatureCollection.this[Type key]
    {
        get
        {
            if (_sharedMask != 0 && (_sharedMask & SharedFeatureTypes.BitOf(key)) != 0)
            {
                return _sharedFeature;
            }

            var set = IndexOfSet(key);
            if (set >= 0)
            {
                return _setFeatures![set].Value;
            }

            return Array.IndexOf(s_ownFeatures, key) >= 0 || (key == typeof(IConnectionSocketFeature) && _io.HasSocket) ? this : null;
        }
        set
        {
            _featureRevision++;
            var bit = SharedFeatureTypes.BitOf(key);
            var set = IndexOfSet(key);
            if (set < 0 && value is not null && (_sharedMask == 0 || ReferenceEquals(value, _sharedFeature))
                && (bit != 0 || (bit = SharedFeatureTypes.Add(key)) != 0))
            {
                _sharedFeature = value;
                _sharedMask |= bit;
                return;
            }

            if ((_sharedMask & bit) != 0)
            {
                // Set to something else now: it leaves the shared field for the array.
                _sharedMask &= ~bit;
                if (_sharedMask == 0)
                {
                    _sharedFeature = null;
                }
            }

            if (set < 0)
            {
                _setFeatures ??= new KeyValuePair<Type, object?>[4];
                if (_setCount == _setFeatures.Length)
                {
                    Array.Resize(ref _setFeatures, _setCount * 2);
                }

                set = _setCount++;
            }

            _setFeatures![set] = new(key, value);
        }
    }

    private int IndexOfSet(Type key)
    {
        for (var i = 0; i < _setCount; i++)
        {
            if (_setFeatures![i].Key == key)
            {
                return i;
            }
        }

        return -1;
    }

    TFeature? IFeatureCollection.Get<TFeature>() where TFeature : default
        => (TFeature?)((IFeatureCollection)this)[typeof(TFeature)];

    void IFeatureCollection.Set<TFeature>(TFeature? instance) where TFeature : default
        => ((IFeatureCollection)this)[typeof(TFeature)] = instance;

    IEnumerator<KeyValuePair<Type, object>> IEnumerable<KeyValuePair<Type, object>>.GetEnumerator()
    {
        foreach (var type in s_ownFeatures)
        {
            if (IndexOfSet(type) < 0)
            {
                yield return new(type, this);
            }
        }

        if (_io.HasSocket && IndexOfSet(typeof(IConnectionSocketFeature)) < 0)
        {
            yield return new(typeof(IConnectionSocketFeature), this);
        }

        if (_sharedMask != 0)
        {
            foreach (var type in SharedFeatureTypes.Of(_sharedMask))
            {
                yield return new(type, _sharedFeature!);
            }
        }

        for (var i = 0; i < _setCount; i++)
        {
            if (_setFeatures![i].Value is { } feature)
            {
                yield return new(_setFeatures[i].Key, feature);
            }
        }
    }

    IEnumerator IEnumerable.GetEnumerator() => ((IEnumerable<KeyValuePair<Type, object>>)this).GetEnumerator();

    // The endpoint and id features share their members with ConnectionContext's overrides.
    string IConnectionIdFeature.ConnectionId
    {
        get => ConnectionId;
        set => ConnectionId = value;
    }

    IDuplexPipe IConnectionTransportFeature.Transport
    {
        get => Transport;
        set => Transport = value;
    }

    IDictionary<object, object?> IConnectionItemsFeature.Items
    {
        get => Items;
        set => Items = value;
    }

    CancellationToken IConnectionLifetimeFeature.ConnectionClosed
    {
        get => ConnectionClosed;
        set => ConnectionClosed = value;
    }

    void IConnectionLifetimeFeature.Abort() => Abort();

    EndPoint? IConnectionEndPointFeature.LocalEndPoint
    {
        get => LocalEndPoint;
        set => LocalEndPoint = value;
    }

    /// <summary>
    /// The connection's socket, for per-connection options and TCP_INFO; disposed once the connection has
    /// ended, when this gives a disposed socket whose every use throws ObjectDisposedException.
    /// </summary>
    System.Net.Sockets.Socket IConnectionSocketFeature.Socket
    {
        get
        {
            // Under the close lock, so that the socket is made or marked before a close decides what to do
            // with the descriptor (one fcntl at most, on io_uring).
            lock (_closeLock)
            {
                // A connection that has ended answers as Kestrel's Sockets transport does: with a socket
                // that is disposed, whose every use throws ObjectDisposedException, not with a throw here.
                return (_handedOff ? null : _io.ExposeSocket()) ?? EndedSocket.Value;
            }
        }
    }

    /// <summary>A disposed socket, for connections that have ended: disposed, it owns nothing and can be shared.</summary>
    /// Made on first use: a failure then (out of descriptors) is not kept, the next use tries again.
    private static readonly Lazy<System.Net.Sockets.Socket> EndedSocket = new(static () =>
    {
        var socket = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        socket.Dispose();
        return socket;
    }, LazyThreadSafetyMode.PublicationOnly);

    EndPoint? IConnectionEndPointFeature.RemoteEndPoint
    {
        get => RemoteEndPoint;
        set => RemoteEndPoint = value;
    }
}

/// <summary>
/// The feature types set on connections so far in this process, each with a bit of a connection's shared
/// mask (WinsockConnection.Features): a list only added to, of at most 32 (a server sets a handful).
/// </summary>
internal static class SharedFeatureTypes
{
    private static readonly Lock s_lock = new();
    private static Type[] s_types = [];

    /// <summary>The type's bit, or 0 when it has none (not set on any connection yet, or past the 32nd).</summary>
    public static uint BitOf(Type type)
    {
        var types = Volatile.Read(ref s_types);
        for (var i = 0; i < types.Length; i++)
        {
            if (types[i] == type)
            {
                return 1u << i;
            }
        }

        return 0;
    }

    /// <summary>Gives the type a bit (its own if another thread gave it one meanwhile), or 0 when all 32 are taken.</summary>
    public static uint Add(Type type)
    {
        lock (s_lock)
        {
            var bit = BitOf(type);
            if (bit != 0 || s_types.Length == 32)
            {
                return bit;
            }

            // A new array each time, published whole: readers never see one half filled.
            Volatile.Write(ref s_types, [.. s_types, type]);
            return 1u << (s_types.Length - 1);
        }
    }

    /// <summary>The types of a mask's bits.</summary>
    public static IEnumerable<Type> Of(uint mask)
    {
        var types = Volatile.Read(ref s_types);
        for (var i = 0; i < types.Length; i++)
        {
            if ((mask & (1u << i)) != 0)
            {
                yield return types[i];
            }
        }
    }
}
